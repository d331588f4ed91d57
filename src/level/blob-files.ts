import { randomBytes } from 'node:crypto';
import { type BigIntStats, closeSync, constants, fdatasync, fstat, fstatSync, fsync, lstat, lstatSync, open, openSync, readSync, rename, unlink, write, close } from 'node:fs';
import { mkdir, readdir } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { CacheError, storageError } from '../errors.js';
import { fileRefused } from '../temp-files.js';
import { fsCall as call } from '../fs-call.js';

/** Values of at least this many bytes live in files of their own instead of inside LevelDB. */
export const BLOB_MIN_BYTES = 32 * 1024;
/** How many removals run on libuv's thread pool at once. */
const REMOVALS_AT_ONCE = 8;

/**
 * The files that hold large values, one per value, in `directory`'s 256 subdirectories. A name is never
 * reused: this open's names start with a random prefix and a counter, so that a file written but never
 * referenced (the process stopped between writing it and committing its record) is known to be garbage.
 */
export class BlobFiles {
  readonly directory: string;
  readonly #sync: boolean;
  readonly #prefix = randomBytes(6).toString('hex');
  #counter = 0;
  readonly #made = new Map<string, Promise<unknown>>();
  readonly #toRemove: string[] = [];
  /** The files asked to be removed whose removal has not ended yet. */
  readonly #beingRemoved = new Set<string>();
  #removing = 0;
  readonly #idle: (() => void)[] = [];
  /** The files handed out under held handles: how many pins each has, and its length. */
  readonly #pins = new Map<string, { count: number; lengthBytes: number }>();
  /** Pinned files asked to be removed, by name with their lengths: removed at their last unpin. */
  readonly #deferred = new Map<string, number>();
  #deferredBytes = 0;
  /**
   * The bytes of files read and still in use, by name: a file never changes once written, so the readers of one value
   * (say, every reader granted when a getset ends) share one copy instead of reading one each.
   */
  readonly #inUse = new Map<string, WeakRef<Buffer>>();
  readonly #unused = new FinalizationRegistry<string>((name) => {
    if (this.#inUse.get(name)?.deref() === undefined) this.#inUse.delete(name);
  });

  constructor(directory: string, options: { sync: boolean }) {
    this.directory = directory;
    this.#sync = options.sync;
  }

  /** A name no file has had, as `subdirectory/file`. */
  newName(): string {
    const n = this.#counter++;
    return `${(n & 0xff).toString(16).padStart(2, '0')}/${this.#prefix}-${n.toString(36)}`;
  }

  /** Whether `name` was made by this open, and so may belong to a write still under way. */
  isOurs(name: string): boolean {
    return name.startsWith(this.#prefix, 3);
  }

  /** The subdirectory that holds file `name`, and its making (once per subdirectory until a write in it fails). */
  #subdirectoryOf(name: string): { subdirectory: string; made: Promise<unknown> } {
    const subdirectory = join(this.directory, name.slice(0, 2));
    let made = this.#made.get(subdirectory);
    if (!made) this.#made.set(subdirectory, (made = this.#makeDirectory(subdirectory)));
    return { subdirectory, made };
  }

  /**
   * Writes a new file (never replacing one); with `sync`, the file and its directory entry reach the disk
   * before this resolves. A failed write leaves no file behind.
   * @throws CacheError `CACHE_STORAGE`.
   */
  async write(name: string, bytes: Uint8Array): Promise<void> {
    const { subdirectory, made } = this.#subdirectoryOf(name);
    const path = join(this.directory, name);
    try {
      await made;
      const fd = await call<number>((done) => open(path, 'wx', 0o600, done));
      let failure: unknown;
      try {
        for (let at = 0; at < bytes.byteLength; ) at += await call<number>((done) => write(fd, bytes, at, bytes.byteLength - at, null, done));
        if (this.#sync) await call((done) => fdatasync(fd, done));
      } catch (error) {
        failure = error;
      }
      // A failed close can be the first report of a failed write: it fails the write too.
      await call((done) => close(fd, done)).catch((error: unknown) => (failure ??= error));
      if (failure !== undefined) throw failure;
      if (this.#sync) await this.#syncDirectory(subdirectory);
    } catch (error) {
      this.#made.delete(subdirectory);
      this.remove(name);
      throw storageError('Cannot write a value file of the cache', error);
    }
  }

  /**
   * Moves the file at `path` (in the same filesystem as the store), open as `fd`, into place as `name`, then checks
   * that the file now named `name` is still the one `fd` has open, with one link and `lengthBytes`; with `sync`, its
   * directory entry reaches the disk before this resolves.
   * @throws CacheError `CACHE_FILE_REFUSED` when the file was swapped, linked or resized meanwhile (the moved file is
   * removed), or `path` is gone; `CACHE_STORAGE`.
   */
  async adopt(path: string, fd: number, name: string, lengthBytes: number): Promise<void> {
    const { subdirectory, made } = this.#subdirectoryOf(name);
    const target = join(this.directory, name);
    try {
      await made;
      await call((done) => rename(path, target, done));
    } catch (error) {
      this.#made.delete(subdirectory);
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') throw fileRefused(`${path} is gone`);
      throw storageError('Cannot move a value file into the cache', error);
    }
    let moved: BigIntStats;
    let held: BigIntStats;
    try {
      held = await call<BigIntStats>((done) => fstat(fd, { bigint: true }, done));
      moved = await call<BigIntStats>((done) => lstat(target, { bigint: true }, done));
    } catch (error) {
      this.remove(name);
      throw storageError('Cannot check a value file moved into the cache', error);
    }
    if (moved.dev !== held.dev || moved.ino !== held.ino || moved.nlink !== 1n || held.nlink !== 1n || moved.size !== BigInt(lengthBytes)) {
      this.remove(name);
      throw fileRefused(`${path} was replaced, linked or resized while it was being committed`);
    }
    if (this.#sync) await this.#syncDirectory(subdirectory).catch((error: unknown) => {
      this.remove(name);
      throw storageError('Cannot write a value file of the cache', error);
    });
  }

  /**
   * Makes `subdirectory` (and `blobs/`), never the data directory above them: one deleted under the store stays
   * deleted. With `sync`, the entries of the directories it made reach the disk.
   */
  async #makeDirectory(subdirectory: string): Promise<void> {
    const madeBlobs = await makeOne(this.directory);
    const madeSubdirectory = await makeOne(subdirectory);
    if (!this.#sync) return;
    // Each new directory's entry lives in its parent: the data directory for `blobs/`, `blobs/` for a subdirectory.
    if (madeSubdirectory) await this.#syncDirectory(this.directory);
    if (madeBlobs) await this.#syncDirectory(dirname(this.directory));
  }

  async #syncDirectory(directory: string): Promise<void> {
    const fd = await call<number>((done) => open(directory, 'r', done));
    try {
      await call((done) => fsync(fd, done));
    } finally {
      await call((done) => close(fd, done));
    }
  }

  /**
   * Reads a file whole, synchronously, like the database's own reads; while the bytes of an earlier read of the file
   * are still in use, returns them instead, so the caller must not change them.
   * @throws CacheError `CACHE_CORRUPT` when the file is missing or shorter than its record says, `CACHE_STORAGE`
   * when it cannot be read.
   */
  read(name: string, length: number): Buffer {
    const shared = this.#inUse.get(name)?.deref();
    if (shared) return shared;
    const bytes = this.#readFile(name, length);
    this.#inUse.set(name, new WeakRef(bytes));
    this.#unused.register(bytes, name);
    return bytes;
  }

  /**
   * Checks, without reading it, that the file `name` is there whole (a regular file of at least `length` bytes).
   * @throws CacheError `CACHE_CORRUPT` when it is missing, cut short or not a regular file.
   */
  check(name: string, length: number): void {
    const path = join(this.directory, name);
    let info;
    try {
      info = lstatSync(path, { throwIfNoEntry: false });
    } catch (error) {
      throw storageError('Cannot read a value file of the cache', error);
    }
    if (!info || !info.isFile() || info.size < length) {
      throw missing(path, new Error(info ? `the file is not a regular file of at least ${length} bytes` : 'no such file'));
    }
  }

  #readFile(name: string, length: number): Buffer {
    const path = join(this.directory, name);
    let fd: number;
    try {
      // Neither a link followed nor a FIFO waited on: something planted under blobs/ must not block the process.
      fd = openSync(path, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if (code === 'ENOENT' || code === 'ELOOP' || code === 'ENXIO') throw missing(path, error);
      throw storageError('Cannot read a value file of the cache', error);
    }
    try {
      if (!fstatSync(fd).isFile()) throw missing(path, new Error('the file is not a regular file'));
      // Not from the shared pool: a value kept in memory must not keep a pool slab of other values alive.
      const bytes = Buffer.allocUnsafeSlow(length);
      let got = 0;
      while (got < length) {
        const n = readSync(fd, bytes, got, length - got, got);
        if (n === 0) throw missing(path, new Error(`the file has ${got} of its ${length} bytes`));
        got += n;
      }
      return bytes;
    } catch (error) {
      if (error instanceof CacheError) throw error;
      throw storageError('Cannot read a value file of the cache', error);
    } finally {
      try {
        closeSync(fd);
      } catch {
        // Closing a descriptor that was only read from cannot lose anything.
      }
    }
  }

  /**
   * Keeps the file `name` of `lengthBytes` from being removed until the returned function is called (it does nothing
   * the second time): a {@link BlobFiles.remove} meanwhile waits for the last unpin. Pins live in memory only: after a
   * crash, a file whose removal waited has no record naming it, and the next open's sweep removes it.
   */
  pin(name: string, lengthBytes: number): () => void {
    const pinned = this.#pins.get(name);
    if (pinned) pinned.count++;
    else this.#pins.set(name, { count: 1, lengthBytes });
    let done = false;
    return () => {
      if (done) return;
      done = true;
      this.#unpin(name);
    };
  }

  #unpin(name: string): void {
    const pinned = this.#pins.get(name);
    if (!pinned || --pinned.count > 0) return;
    this.#pins.delete(name);
    const lengthBytes = this.#deferred.get(name);
    if (lengthBytes === undefined) return;
    this.#deferred.delete(name);
    this.#deferredBytes -= lengthBytes;
    this.remove(name);
  }

  /** Whether a handle holds a pin on `name`. */
  isPinned(name: string): boolean {
    return this.#pins.has(name);
  }

  /** The bytes of the files whose removal waits for their last unpin. */
  get deferredBytes(): number {
    return this.#deferredBytes;
  }

  /** How many files wait for their last unpin to be removed. */
  get deferredFiles(): number {
    return this.#deferred.size;
  }

  /** Removes the files whose removal waits for an unpin now, and forgets every pin: for a store that closes. */
  removeDeferred(): void {
    const names = [...this.#deferred.keys()];
    this.#pins.clear();
    this.#deferred.clear();
    this.#deferredBytes = 0;
    for (const name of names) this.remove(name);
  }

  /**
   * Removes a file in the background, at most {@link REMOVALS_AT_ONCE} at a time so that a large clear leaves the
   * thread pool to the reads: a file that stays behind is garbage that the next open's sweep removes. A pinned file
   * is removed at its last unpin instead.
   */
  remove(name: string): void {
    const pinned = this.#pins.get(name);
    if (pinned) {
      if (!this.#deferred.has(name)) {
        this.#deferred.set(name, pinned.lengthBytes);
        this.#deferredBytes += pinned.lengthBytes;
      }
      return;
    }
    this.#beingRemoved.add(name);
    this.#toRemove.push(name);
    this.#removeNext();
  }

  #removeNext(): void {
    while (this.#removing < REMOVALS_AT_ONCE && this.#toRemove.length > 0) {
      const name = this.#toRemove.shift()!;
      this.#removing++;
      unlink(join(this.directory, name), () => {
        this.#beingRemoved.delete(name);
        this.#removing--;
        this.#removeNext();
        if (this.#removing === 0 && this.#toRemove.length === 0) for (const done of this.#idle.splice(0)) done();
      });
    }
  }

  /** Resolves once every removal asked for so far has ended. */
  removed(): Promise<void> {
    if (this.#removing === 0) return Promise.resolve();
    return new Promise((resolve) => this.#idle.push(resolve));
  }

  /** Whether `name` was asked to be removed and its removal has not ended (waiting for its last unpin included). */
  isBeingRemoved(name: string): boolean {
    return this.#beingRemoved.has(name) || this.#deferred.has(name);
  }

  /** The names of the files there now, as `subdirectory/file`. */
  async list(): Promise<string[]> {
    const names: string[] = [];
    let subdirectories: string[];
    try {
      subdirectories = await readdir(this.directory);
    } catch {
      return names;
    }
    for (const subdirectory of subdirectories) {
      if (!/^[0-9a-f]{2}$/.test(subdirectory)) continue;
      try {
        for (const file of await readdir(join(this.directory, subdirectory))) names.push(`${subdirectory}/${file}`);
      } catch {
        continue;
      }
    }
    return names;
  }

  /**
   * Removes the files of earlier opens that `isReferenced` does not claim, and returns how many it removed. A pinned
   * file is left (its removal, if asked for, waits for its unpin): it may have been handed out, then replaced, before
   * the caller read what is referenced.
   */
  async sweep(isReferenced: (name: string) => boolean): Promise<number> {
    let removed = 0;
    for (const name of await this.list()) {
      if (this.isOurs(name) || isReferenced(name) || this.#pins.has(name)) continue;
      this.remove(name);
      removed++;
    }
    return removed;
  }
}

/** Makes one directory whose parent exists; resolves whether it made it (false: it was there). */
async function makeOne(path: string): Promise<boolean> {
  try {
    await mkdir(path, { mode: 0o700 });
    return true;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw error;
  }
}

function missing(path: string, cause: unknown): CacheError {
  return new CacheError(
    'CACHE_CORRUPT',
    `The file holding a stored value, ${path}, is missing or cut short: something other than hoard changed the cache directory.`,
    { cause },
  );
}
