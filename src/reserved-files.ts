import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import type { ReservedFile } from './cache.js';
import { fileRefused, type OpenReservation, TempFiles } from './temp-files.js';
import { privateDirectory } from './private-files.js';

function describe(value: unknown): string {
  return value === null ? 'null' : Array.isArray(value) ? 'an array' : typeof value;
}

/**
 * The reservations one root cache handed out (its scopes share them), by path: what turns the path a caller gives
 * `setFile` back into the reservation, so that a path the cache did not give cannot even be named.
 */
export class ReservedFiles<R extends object> {
  readonly #byPath = new Map<string, R>();
  readonly #discard: (entry: R) => Promise<void>;

  /** `discard` removes an uncommitted reservation's file. */
  constructor(discard: (entry: R) => Promise<void>) {
    this.#discard = discard;
  }

  /** Hands out reservation `entry`, whose file is at `path`: disposing it discards it unless it was committed. */
  add(path: string, entry: R): ReservedFile {
    this.#byPath.set(path, entry);
    const dispose = async (): Promise<void> => {
      if (this.#byPath.get(path) !== entry) return;
      this.#byPath.delete(path);
      await this.#discard(entry);
    };
    return Object.freeze({ path, [Symbol.asyncDispose]: dispose });
  }

  /**
   * The reservation at `path`.
   * @throws TypeError for a path this cache did not hand out, or already committed or discarded.
   */
  get(path: unknown): R {
    if (typeof path !== 'string') throw new TypeError(`A reserved file's path must be a string, got ${describe(path)}.`);
    const entry = this.#byPath.get(path);
    if (entry === undefined) {
      throw new TypeError(`${JSON.stringify(path)} is not a path this cache's reserveFile() gave, or it was committed or discarded.`);
    }
    return entry;
  }

  /** Forgets the reservation at `path`, committed: its file is the cache's now. */
  committed(path: string, entry: R): void {
    if (this.#byPath.get(path) === entry) this.#byPath.delete(path);
  }

  /** Forgets every reservation and returns them (a cache that closes discards them). */
  drain(): R[] {
    const entries = [...this.#byPath.values()];
    this.#byPath.clear();
    return entries;
  }
}

/**
 * Reservations in this process's private directory (`src/private-files.ts`), for a cache whose store keeps no files
 * (a MemoryCache, a RemoteCache that cannot reach the daemon's files): the commit reads the file through a descriptor
 * checked as a store's commit checks it (a regular file of this user's with one link, no link followed).
 */
export class PrivateReservations {
  #temp: Promise<TempFiles> | undefined;

  async #files(): Promise<TempFiles> {
    return (this.#temp ??= privateDirectory().then((directory) => new TempFiles(join(directory, `reserved-${randomBytes(4).toString('hex')}`))));
  }

  /** @throws CacheError `CACHE_STORAGE` when the private directory cannot be made or written. */
  async reserve(): Promise<{ reservation: number; path: string }> {
    return (await this.#files()).reserve();
  }

  /**
   * The bytes reservation `reservation`'s file holds; the reservation stays until {@link PrivateReservations.discard}.
   * @throws CacheError `CACHE_FILE_REFUSED`, `CACHE_VALUE_TOO_LARGE`, `CACHE_STORAGE`.
   */
  async read(reservation: number): Promise<Buffer> {
    const files = await this.#temp;
    if (!files) throw fileRefused(`reservation ${reservation} is not one this cache gave`);
    const opened = await files.open(reservation);
    try {
      return await opened.readAll();
    } finally {
      await opened.close();
    }
  }

  /**
   * Reservation `reservation`'s file opened and checked as {@link PrivateReservations.read} checks it, for a caller
   * that reads it a part at a time; its `close` must be called.
   * @throws CacheError `CACHE_FILE_REFUSED`, `CACHE_VALUE_TOO_LARGE`, `CACHE_STORAGE`.
   */
  async open(reservation: number): Promise<OpenReservation> {
    const files = await this.#temp;
    if (!files) throw fileRefused(`reservation ${reservation} is not one this cache gave`);
    return files.open(reservation);
  }

  /** Removes reservation `reservation`'s file; an unknown one is left alone. */
  async discard(reservation: number): Promise<void> {
    await (await this.#temp)?.discard(reservation);
  }

  /** Removes every reservation's file and the directory's use: for a cache that closes. */
  async discardAll(): Promise<void> {
    await (await this.#temp?.catch(() => undefined))?.discardAll();
  }
}
