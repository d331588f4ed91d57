import { randomBytes } from 'node:crypto';
import { type BigIntStats, close, constants, fchmod, fdatasync, fstat, open, read, write } from 'node:fs';
import { lstat, mkdir, readdir, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { CacheError, storageError } from './errors.js';
import { fsCall as call } from './fs-call.js';

/** A `CACHE_FILE_REFUSED` error: `why` says what was wrong with the file offered. */
export function fileRefused(why: string): CacheError {
  return new CacheError('CACHE_FILE_REFUSED', `The file offered as a value was refused: ${why}. Nothing was written.`);
}

/** The descriptors a store keeps open for appends to its reservations, unless told otherwise. */
export const DEFAULT_MAX_OPEN_WRITERS = 64;

/** A descriptor appends to one reservation write through, and how many appends are writing through it now. */
interface Writer {
  readonly fd: Promise<number>;
  busy: number;
  /** Set while a close waits for the appends writing through it to end. */
  idle?: () => void;
}

/** The largest value a record can name: its length is a `u32`. */
export const FILE_VALUE_MAX_BYTES = 0xffff_ffff;

/** A reservation opened for its commit (see {@link TempFiles.open}); `close` must be called whatever follows. */
export interface OpenReservation {
  readonly path: string;
  /** A descriptor on the file that was checked, read-only. */
  readonly fd: number;
  readonly sizeBytes: number;
  /** Makes the file read-only (0400), and with `sync` makes its bytes reach the disk. */
  seal(options: { sync: boolean }): Promise<void>;
  /** Reads the whole file through the descriptor (for a value small enough to be kept inline). */
  readAll(): Promise<Buffer>;
  /** Forgets the reservation: its file was moved into the store (or removed). */
  consumed(): void;
  /** Closes the descriptor; the reservation, unless consumed, can be committed again or discarded. */
  close(): Promise<void>;
}

/**
 * Reservations: empty private files (0600) in a private directory (0700) of the store's, handed out by number so that
 * another process of the same user (a worker) can write a value into one, and the holder of an item's lock commit it
 * without sending its bytes. A path is never reused: this open's names start with a random prefix, so the files of
 * earlier opens, left by a crash, are known to be garbage.
 */
export class TempFiles {
  readonly directory: string;
  readonly #prefix = randomBytes(6).toString('hex');
  #counter = 0;
  readonly #paths = new Map<number, string>();
  readonly #committing = new Set<number>();
  /** The bytes each open reservation's file holds, as last known (from appends, a stat, or its commit's check). */
  readonly #sizes = new Map<number, number>();
  #reservedBytes = 0;
  /** The reservations filled by appends: their size is known, not measured. */
  readonly #appended = new Set<number>();
  /** The descriptors appends write through, least recently used first, closed at commit or discard or to make room. */
  readonly #writers = new Map<number, Writer>();
  readonly #maxOpenWriters: number;
  /** The descriptors open or being opened or closed for appends: never more than `#maxOpenWriters`. */
  #openWriters = 0;
  /** Appends waiting for a descriptor to be free (every one being written through). */
  #writerWaiters: Array<() => void> = [];
  #made: Promise<void> | undefined;

  /** `maxOpenWriters` (default 64) caps the descriptors kept open for appends, whatever the number of reservations. */
  constructor(directory: string, options: { maxOpenWriters?: number } = {}) {
    const { maxOpenWriters = DEFAULT_MAX_OPEN_WRITERS } = options;
    if (!Number.isInteger(maxOpenWriters) || maxOpenWriters < 1) throw new TypeError('maxOpenWriters must be a positive integer');
    this.directory = directory;
    this.#maxOpenWriters = maxOpenWriters;
  }

  /** How many descriptors are open (or being opened or closed) for appends: at most `maxOpenWriters`. */
  get openWriters(): number {
    return this.#openWriters;
  }

  /** How many reservations are open (neither committed nor discarded). */
  get size(): number {
    return this.#paths.size;
  }

  /**
   * The bytes the open reservations' files hold, as last known: exact for files filled by {@link TempFiles.append},
   * and as of the last {@link TempFiles.measure} for files other processes write.
   */
  get reservedBytes(): number {
    return this.#reservedBytes;
  }

  #setSize(reservation: number, sizeBytes: number): void {
    this.#reservedBytes += sizeBytes - (this.#sizes.get(reservation) ?? 0);
    this.#sizes.set(reservation, sizeBytes);
  }

  #forget(reservation: number): void {
    this.#reservedBytes -= this.#sizes.get(reservation) ?? 0;
    this.#sizes.delete(reservation);
    this.#appended.delete(reservation);
    this.#paths.delete(reservation);
  }

  /**
   * Closes the descriptor appends to `reservation` wrote through, if any, once the appends writing through it now have
   * ended (a store that closes discards reservations whose chunks may still be arriving): a descriptor is never closed,
   * and its number reused, under a write.
   */
  async #closeWriter(reservation: number): Promise<void> {
    const writer = this.#writers.get(reservation);
    if (writer === undefined) return;
    this.#writers.delete(reservation);
    if (writer.busy > 0) await new Promise<void>((resolve) => (writer.idle = resolve));
    // A descriptor that failed to open was counted off when it failed.
    const fd = await writer.fd.catch(() => undefined);
    if (fd === undefined) return;
    await call<void>((done) => close(fd, done)).catch(() => {});
    this.#writerClosed();
  }

  #writerClosed(): void {
    this.#openWriters--;
    const waiters = this.#writerWaiters;
    this.#writerWaiters = [];
    for (const wake of waiters) wake();
  }

  /**
   * The writer of reservation `reservation`, marked busy (the caller calls {@link TempFiles.#release}), opened when it
   * has none: when `#maxOpenWriters` are open, the least recently used one not being written through is closed first
   * (its next append opens it again), or, all being busy, this waits for one to be free.
   */
  async #acquire(reservation: number, path: string): Promise<Writer> {
    for (;;) {
      const writer = this.#writers.get(reservation);
      if (writer !== undefined) {
        this.#writers.delete(reservation);
        this.#writers.set(reservation, writer);
        writer.busy++;
        return writer;
      }
      if (this.#openWriters < this.#maxOpenWriters) {
        this.#openWriters++;
        const opened: Writer = {
          fd: call<number>((done) => open(path, constants.O_WRONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK, done)),
          busy: 1,
        };
        this.#writers.set(reservation, opened);
        opened.fd.catch(() => {
          if (this.#writers.get(reservation) === opened) this.#writers.delete(reservation);
          this.#writerClosed();
        });
        return opened;
      }
      const wait = new Promise<void>((wake) => this.#writerWaiters.push(wake));
      for (const [other, idle] of this.#writers) {
        if (idle.busy === 0) {
          void this.#closeWriter(other);
          break;
        }
      }
      await wait;
      if (this.#paths.get(reservation) !== path) throw fileRefused(`reservation ${reservation} was committed or discarded`);
    }
  }

  #release(writer: Writer): void {
    if (--writer.busy > 0) return;
    writer.idle?.();
    if (this.#writerWaiters.length === 0) return;
    const waiters = this.#writerWaiters;
    this.#writerWaiters = [];
    for (const wake of waiters) wake();
  }

  /**
   * Writes `bytes` into reservation `reservation`'s file from `offsetBytes`, through a descriptor kept open from the
   * first append until its commit or discard, or until it is the least recently used when `maxOpenWriters` are open
   * (opened without following a link or blocking on a FIFO). The chunk counts in {@link TempFiles.reservedBytes} from
   * the call on (before anything is awaited), so that a check of the limit and the call, made in one turn, see every
   * chunk in flight; a failed write counts only the bytes it wrote. The caller runs one reservation's appends one after
   * another.
   * @throws CacheError `CACHE_FILE_REFUSED` (not an open reservation, being committed, its file replaced or gone),
   * `CACHE_STORAGE`.
   */
  async append(reservation: number, offsetBytes: number, bytes: Uint8Array): Promise<void> {
    const path = this.#paths.get(reservation);
    if (path === undefined) throw fileRefused(`reservation ${reservation} is not one this cache gave, or it was committed or discarded`);
    if (this.#committing.has(reservation)) throw fileRefused(`reservation ${reservation} is being committed`);
    this.#appended.add(reservation);
    const before = this.#sizes.get(reservation) ?? 0;
    this.#setSize(reservation, Math.max(before, offsetBytes + bytes.byteLength));
    let written = 0;
    const settle = (): void => {
      if (this.#paths.get(reservation) === path) this.#setSize(reservation, Math.max(before, offsetBytes + written));
    };
    let writer: Writer;
    try {
      writer = await this.#acquire(reservation, path);
    } catch (error) {
      settle();
      throw error;
    }
    try {
      let fd: number;
      try {
        fd = await writer.fd;
      } catch (error) {
        const code = (error as NodeJS.ErrnoException).code;
        if (code === 'ELOOP' || code === 'ENOENT' || code === 'ENXIO') throw fileRefused(`${path} cannot be written (${code})`);
        throw storageError('Cannot write a reserved file', error);
      }
      try {
        while (written < bytes.byteLength) {
          written += await call<number>((finish) => write(fd, bytes, written, bytes.byteLength - written, offsetBytes + written, finish));
        }
      } catch (error) {
        throw storageError('Cannot write a reserved file', error);
      }
    } catch (error) {
      settle();
      throw error;
    } finally {
      this.#release(writer);
    }
  }

  /**
   * Reads the size of every open reservation's file that other processes write (not those filled by appends, whose
   * size is known, nor those being committed), so that {@link TempFiles.reservedBytes} counts them; a file gone or
   * replaced counts as empty.
   */
  async measure(): Promise<void> {
    await Promise.all(
      [...this.#paths].map(async ([reservation, path]) => {
        if (this.#appended.has(reservation) || this.#committing.has(reservation)) return;
        const stats = await lstat(path).catch(() => undefined);
        if (this.#paths.get(reservation) !== path || this.#appended.has(reservation) || this.#committing.has(reservation)) return;
        this.#setSize(reservation, stats?.isFile() ? stats.size : 0);
      }),
    );
  }

  /**
   * Creates a new empty file, 0600, that nothing else names.
   * @throws CacheError `CACHE_STORAGE`, or `CACHE_UNSAFE_DIRECTORY` when the directory is not a private one of this user.
   */
  async reserve(): Promise<{ reservation: number; path: string }> {
    await (this.#made ??= this.#makeDirectory().catch((error: unknown) => {
      this.#made = undefined;
      throw error;
    }));
    const reservation = ++this.#counter;
    const path = join(this.directory, `${this.#prefix}-r${reservation.toString(36)}`);
    try {
      const fd = await call<number>((done) => open(path, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600, done));
      await call((done) => close(fd, done));
    } catch (error) {
      throw storageError('Cannot reserve a file in the cache directory', error);
    }
    this.#paths.set(reservation, path);
    return { reservation, path };
  }

  async #makeDirectory(): Promise<void> {
    try {
      await mkdir(this.directory, { mode: 0o700 });
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw storageError('Cannot make the directory of reserved files', error);
    }
    const made = await lstat(this.directory);
    if (!made.isDirectory() || made.uid !== process.geteuid!() || (made.mode & 0o077) !== 0) {
      throw new CacheError('CACHE_UNSAFE_DIRECTORY', `${this.directory} is not a directory that only this user can enter: no file is reserved in it.`);
    }
  }

  /**
   * Opens reservation `reservation` for its commit, without following a link and without blocking on a FIFO, and checks
   * that it is a regular file of this user with one link, of at most {@link FILE_VALUE_MAX_BYTES}.
   * @throws CacheError `CACHE_FILE_REFUSED` (the reservation stays as it was), `CACHE_VALUE_TOO_LARGE`, `CACHE_STORAGE`.
   */
  async open(reservation: number): Promise<OpenReservation> {
    const path = this.#paths.get(reservation);
    if (path === undefined) throw fileRefused(`reservation ${reservation} is not one this cache gave, or it was committed or discarded`);
    if (this.#committing.has(reservation)) throw fileRefused(`reservation ${reservation} is being committed`);
    this.#committing.add(reservation);
    // Appends end here: the commit reads what they wrote.
    await this.#closeWriter(reservation);
    let fd: number;
    try {
      fd = await call<number>((done) => open(path, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK, done));
    } catch (error) {
      this.#committing.delete(reservation);
      const code = (error as NodeJS.ErrnoException).code;
      if (code === 'ELOOP') throw fileRefused(`${path} is a symbolic link`);
      if (code === 'ENOENT') throw fileRefused(`${path} is gone`);
      if (code === 'ENXIO' || code === 'EACCES') throw fileRefused(`${path} cannot be opened (${code})`);
      throw storageError('Cannot open a reserved file', error);
    }
    const closeIt = (): Promise<void> => {
      this.#committing.delete(reservation);
      return call<void>((done) => close(fd, done)).catch(() => {});
    };
    try {
      const stats = await call<BigIntStats>((done) => fstat(fd, { bigint: true }, done));
      if (!stats.isFile()) throw fileRefused(`${path} is not a regular file`);
      if (stats.uid !== BigInt(process.geteuid!())) throw fileRefused(`${path} belongs to user ${stats.uid}, not to the cache's user`);
      if (stats.nlink !== 1n) throw fileRefused(`${path} has ${stats.nlink} links (a hard link to another file)`);
      if (stats.size > BigInt(FILE_VALUE_MAX_BYTES)) {
        throw new CacheError('CACHE_VALUE_TOO_LARGE', `The file offered as a value has ${stats.size} bytes, more than the ${FILE_VALUE_MAX_BYTES} a value may have; nothing was written.`);
      }
      const sizeBytes = Number(stats.size);
      this.#setSize(reservation, sizeBytes);
      return {
        path,
        fd,
        sizeBytes,
        seal: async ({ sync }) => {
          try {
            await call((done) => fchmod(fd, 0o400, done));
            if (sync) await call((done) => fdatasync(fd, done));
          } catch (error) {
            throw storageError('Cannot make a reserved file read-only', error);
          }
        },
        readAll: async () => {
          const bytes = Buffer.allocUnsafe(sizeBytes);
          let got = 0;
          while (got < sizeBytes) {
            const n = await call<number>((done) => read(fd, bytes, got, sizeBytes - got, got, done));
            if (n === 0) throw fileRefused(`${path} was cut short while it was being committed`);
            got += n;
          }
          return bytes;
        },
        consumed: () => {
          this.#forget(reservation);
        },
        close: closeIt,
      };
    } catch (error) {
      await closeIt();
      throw error;
    }
  }

  /** Removes reservation `reservation`'s file; an unknown or finished reservation is left alone. */
  async discard(reservation: number): Promise<void> {
    const path = this.#paths.get(reservation);
    if (path === undefined) return;
    this.#forget(reservation);
    await this.#closeWriter(reservation);
    await unlink(path).catch(() => {});
  }

  /** Removes every reservation's file: for a store that closes. */
  async discardAll(): Promise<void> {
    await Promise.all([...this.#paths.keys()].map((reservation) => this.discard(reservation)));
  }

  /** Removes the files of earlier opens (left by a crash) and returns how many; a failure leaves them for the next open. */
  async sweep(): Promise<number> {
    let names: string[];
    try {
      names = await readdir(this.directory);
    } catch {
      return 0;
    }
    let removed = 0;
    for (const name of names) {
      if (name.startsWith(`${this.#prefix}-`)) continue;
      try {
        await unlink(join(this.directory, name));
        removed++;
      } catch {
        // A directory put there, or a file gone meanwhile: not ours to mend.
      }
    }
    return removed;
  }
}
