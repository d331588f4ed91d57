import { CacheError } from '../src/errors.js';
import { FILE_VALUE_MAX_BYTES, fileRefused } from '../src/temp-files.js';
import type { LocalBackend } from '../src/local-backend.js';
import type { EncodedValue } from '../src/store.js';
import type { ReserveFileResult } from '../src/wire/protocol.js';
import { invalidParams } from '../src/wire/wire-error.js';

/** How many reservations one connection may have open (neither committed nor discarded) at once. */
export const MAX_RESERVATIONS_PER_SESSION = 256;

interface Entry {
  /** Whether the client was given the path (its processes write the file); else only `append` fills it. */
  readonly hasPath: boolean;
  /** The bytes appended so far (for a reservation without a path). */
  sizeBytes: number;
  /** The appends and the commit of the reservation, one after another. */
  queue: Promise<void>;
  committing: boolean;
}

/**
 * One connection's reservations (`cache/reserveFile`): the store's files by number, which only this connection may
 * fill (`append`), commit or discard; at most {@link MAX_RESERVATIONS_PER_SESSION} open, all removed when it closes.
 */
export class SessionReservations {
  readonly #backend: LocalBackend<EncodedValue, EncodedValue>;
  readonly #open = new Map<number, Entry>();
  /** Reservations being made: they count against the limit before they exist. */
  #reserving = 0;
  readonly #commits = new Set<Promise<unknown>>();
  #closed = false;

  constructor(backend: LocalBackend<EncodedValue, EncodedValue>) {
    this.#backend = backend;
  }

  /** How many reservations are open. */
  get size(): number {
    return this.#open.size;
  }

  /**
   * Reserves an empty file (0600) in the store's `temp/`; its path is given only `withPath` (a client that reads the
   * daemon's files).
   * @throws CacheError `CACHE_FILE_REFUSED` past the limit, or the store's errors.
   */
  async reserve(options: { withPath: boolean }): Promise<ReserveFileResult> {
    if (this.#open.size + this.#reserving >= MAX_RESERVATIONS_PER_SESSION) {
      throw new CacheError(
        'CACHE_FILE_REFUSED',
        `This connection already has ${MAX_RESERVATIONS_PER_SESSION} reserved files open, the daemon's limit: commit or discard some first.`,
      );
    }
    this.#reserving++;
    let reserved;
    try {
      reserved = await this.#backend.reserve();
    } finally {
      this.#reserving--;
    }
    if (this.#closed) {
      await this.#backend.discard(reserved.reservation);
      throw new CacheError('CACHE_CONNECTION_LOST', 'The connection closed.');
    }
    this.#open.set(reserved.reservation, { hasPath: options.withPath, sizeBytes: 0, queue: Promise.resolve(), committing: false });
    return { reservation: reserved.reservation, path: options.withPath ? reserved.path : null };
  }

  /** @throws CacheError `CACHE_FILE_REFUSED` for a number that is not this connection's open reservation. */
  #entry(reservation: number): Entry {
    const entry = this.#open.get(reservation);
    if (!entry) throw fileRefused(`reservation ${reservation} is not an open reservation of this connection`);
    return entry;
  }

  /**
   * Appends `bytes` to a reservation without a path (`cache/writeChunk`), at `offsetBytes`, which must be the bytes
   * appended so far; appends to one reservation run one after another.
   * @throws CacheError `CACHE_FILE_REFUSED` (not this connection's, one with a path, being committed), `CACHE_INVALID_PARAMS`
   * (`offsetBytes` is not the size so far), `CACHE_VALUE_TOO_LARGE` (past 4 GiB − 1), `CACHE_OVER_SIZE_LIMIT` (past the
   * store's size limit), `CACHE_STORAGE`.
   */
  async append(reservation: number, offsetBytes: number, bytes: Uint8Array): Promise<void> {
    const entry = this.#entry(reservation);
    if (entry.hasPath) throw fileRefused(`reservation ${reservation} was given a path: its writer writes the file, not the connection`);
    if (entry.committing) throw fileRefused(`reservation ${reservation} is being committed`);
    const run = entry.queue.then(async () => {
      if (this.#open.get(reservation) !== entry) throw fileRefused(`reservation ${reservation} was committed or discarded`);
      if (offsetBytes !== entry.sizeBytes) throw invalidParams(`offsetBytes must be ${entry.sizeBytes}, the bytes written so far`);
      const end = entry.sizeBytes + bytes.byteLength;
      if (end > FILE_VALUE_MAX_BYTES) {
        throw new CacheError('CACHE_VALUE_TOO_LARGE', `A value may have at most ${FILE_VALUE_MAX_BYTES} bytes; this chunk would take it to ${end}.`);
      }
      const usage = this.#backend.usage();
      const limitBytes = usage?.limitBytes ?? null;
      if (limitBytes !== null && end > limitBytes) {
        throw new CacheError('CACHE_OVER_SIZE_LIMIT', `The value would take ${end} bytes, more than the cache's size limit of ${limitBytes}.`);
      }
      // Eviction makes room for open reservations by removing items, but cannot free reservations themselves.
      const reservedBytes = (usage?.reservedBytes ?? 0) + bytes.byteLength;
      if (limitBytes !== null && reservedBytes > limitBytes) {
        throw new CacheError(
          'CACHE_OVER_SIZE_LIMIT',
          `Values being written would take ${reservedBytes} bytes with this chunk, more than the cache's size limit of ${limitBytes}; commit or discard some first.`,
        );
      }
      await this.#backend.append(reservation, entry.sizeBytes, bytes);
      entry.sizeBytes = end;
    });
    entry.queue = run.catch(() => {});
    return run;
  }

  /**
   * Runs the commit of this connection's reservation `reservation` (after its appends), and forgets the reservation
   * once it succeeded; a refused commit leaves it open, as the store does.
   * @throws CacheError `CACHE_FILE_REFUSED` for a number that is not this connection's open reservation, or one being
   * committed; what `run` throws.
   */
  async commit(reservation: number, run: () => Promise<void>): Promise<void> {
    const entry = this.#entry(reservation);
    if (entry.committing) throw fileRefused(`reservation ${reservation} is being committed`);
    entry.committing = true;
    const committed = (async () => {
      try {
        await entry.queue;
        await run();
        this.#open.delete(reservation);
      } finally {
        entry.committing = false;
      }
    })();
    this.#commits.add(committed);
    try {
      await committed;
    } finally {
      this.#commits.delete(committed);
    }
  }

  /** Removes an open reservation's file; a number that is not this connection's open reservation is ignored. */
  async discard(reservation: number): Promise<void> {
    const entry = this.#open.get(reservation);
    if (!entry || entry.committing) return;
    this.#open.delete(reservation);
    await entry.queue;
    await this.#backend.discard(reservation);
  }

  /** Removes every open reservation's file, once the commits under way have ended: for a connection that closed. */
  async discardAll(): Promise<void> {
    this.#closed = true;
    await Promise.allSettled([...this.#commits]);
    await Promise.allSettled([...this.#open.keys()].map((reservation) => this.discard(reservation)));
  }
}
