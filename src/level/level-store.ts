import { statSync } from 'node:fs';
import { mkdir, open as openFile, readdir, rm, stat, statfs } from 'node:fs/promises';
import { join } from 'node:path';
import type { Level } from 'level';
import { CacheError, isCacheError, storageError } from '../errors.js';
import type { Scope } from '../scope-path.js';
import { itemKey } from '../scope-path.js';
import type { EncodedValue, Store, StoredRecord } from '../store.js';
import { BLOB_MIN_BYTES, BlobFiles } from './blob-files.js';
import { openExclusive, releaseDirectory } from './exclusive-open.js';
import { GroupCommit } from './group-commit.js';
import { LruMap } from './lru-map.js';
import {
  BLOB_PREFIX,
  blobKey,
  decodeFields,
  decodePointer,
  decodeRecord,
  encodeBlobRecord,
  encodeRecord,
  FORMAT_BLOBS,
  FORMAT_KEY,
  FORMAT_PLAIN,
  inChunks,
  ITEM_PREFIX,
  levelKey,
  range,
  RECORD_VERSION,
  withPrefix,
} from './records.js';

/** The default budget of the in-memory layer of recently used records. */
export const MEMORY_CACHE_BYTES = 32 * 1024 * 1024;
/** What an entry of the in-memory layer costs beyond its value's bytes: key, record and map overhead. */
const ENTRY_OVERHEAD_BYTES = 160;
/** How long after a failed attempt to reopen the database (after a failed write) the next write may try again. */
const REOPEN_RETRY_MS = 1000;
/** The room a reopen needs besides a copy of the database's logs and manifest: a new log, manifest and info log. */
const REOPEN_SPARE_BYTES = 256 * 1024;

/** One LevelDB write of a batch. */
type Operation = { type: 'put'; key: Buffer; value: Buffer } | { type: 'del'; key: Buffer };

export interface LevelStoreOptions {
  /**
   * Flush every write to the disk before acknowledging it, so that it survives a power loss, at a cost in speed;
   * default `false`: a write then survives a crash of the process, since it has reached the operating system.
   */
  sync?: boolean;
  /** The budget of the in-memory layer of recently used records, in bytes; 0 turns it off. Default 32 MiB. */
  memoryCacheBytes?: number;
  /** Where the store says why it refuses writes, and when it takes them again; default nowhere. */
  log?: (line: string) => void;
  /**
   * Called once when the directory is lost for good (deleted, replaced, or taken by another process while the store
   * reopened it): every later call fails with `CACHE_DATA_DIRECTORY_LOST`, and the owner should close the store.
   */
  onLost?: (error: CacheError) => void;
}

/** One write of a batch: a put when `raw` is set, else a delete. */
interface PendingWrite {
  key: string;
  raw: Buffer | undefined;
  /** For a large value: its file, and the record that the memory layer keeps once the batch is written. */
  blob?: { name: string; record: StoredRecord<EncodedValue>; bytes: number };
  /** The file of the value that this write replaces or deletes, removed once the batch is written. */
  replaced: string | undefined;
}

/**
 * A {@link Store} of encoded values in a LevelDB directory that it holds exclusively while open. Recently used
 * records are also kept in memory, within a byte budget; the writes of one turn go to LevelDB as one batch.
 * Values of {@link BLOB_MIN_BYTES} or more go to files of their own in the directory's `blobs/`, so that
 * LevelDB's compactions, which rewrite every record several times over its life, move only their small records.
 *
 * After a failed write (a full disk, say) LevelDB's log may end in a half-written record, after which anything
 * appended is dropped by the next open: so the store refuses writes (`CACHE_STORAGE`) until it has reopened the
 * database, which the next write tries once the disk has room again; reads go on meanwhile. Each write is
 * acknowledged only if no other write failed while it ran and the directory is still the one it opened.
 */
export class LevelStore implements Store<EncodedValue> {
  readonly #db: Level<Buffer, Buffer>;
  readonly directory: string;
  /** The directory's device and inode at open: another pair, or none, means it was replaced or deleted. */
  readonly #identity: { dev: number; ino: number };
  readonly #writeOptions: { sync: boolean };
  readonly #log: (line: string) => void;
  readonly #onLost: ((error: CacheError) => void) | undefined;
  readonly #memory: LruMap<string, StoredRecord<EncodedValue>> | undefined;
  readonly #memoryLimit: number;
  readonly #blobs: BlobFiles;
  /** Whether the database may hold `b` entries: until it does, writes need not look for a replaced file. */
  #hasBlobs: boolean;
  /** Whether the database's layout is already 2 (else the first large value's batch records it). */
  #blobFormat: boolean;
  readonly #commits = new GroupCommit<PendingWrite>({
    write: (writes) => this.#writeBatch(writes),
    written: (writes) => this.#written(writes),
    failed: (writes, error) => this.#batchFailed(writes, error),
  });
  #sweeping: Promise<void> = Promise.resolve();
  /** Why writes are refused: a write failed, and the database has not been reopened since. */
  #refusal: CacheError | undefined;
  /** Why every call fails: the directory is gone, or another process holds it. */
  #lost: CacheError | undefined;
  /** How many writes have failed: a write that ends after another failed may follow the damaged record, so it fails too. */
  #failures = 0;
  /** The reopen under way, which writes wait for. */
  #reopening: Promise<void> | undefined;
  /** Settles when the database, closed to be reopened, is open again (or failed to open): reads wait for it. */
  #closedForReopen: Promise<void> | undefined;
  /** When the next reopen may be tried, after one failed. */
  #retryAtMs = 0;
  /** The writes and clears that LevelDB is carrying out, which a reopen waits for. */
  readonly #inFlight = new Set<Promise<unknown>>();

  private constructor(
    db: Level<Buffer, Buffer>,
    directory: string,
    options: LevelStoreOptions,
    state: { format: string; hasBlobs: boolean; identity: { dev: number; ino: number } },
  ) {
    this.#db = db;
    this.directory = directory;
    this.#identity = state.identity;
    this.#log = options.log ?? (() => {});
    this.#onLost = options.onLost;
    this.#writeOptions = { sync: options.sync ?? false };
    this.#memoryLimit = options.memoryCacheBytes ?? MEMORY_CACHE_BYTES;
    this.#memory = this.#memoryLimit > 0 ? new LruMap({ maxBytes: this.#memoryLimit }) : undefined;
    this.#blobs = new BlobFiles(join(directory, 'blobs'), { sync: this.#writeOptions.sync });
    this.#hasBlobs = state.hasBlobs;
    this.#blobFormat = state.format === FORMAT_BLOBS;
  }

  /**
   * Opens (creating if needed) the database in `directory`.
   * @throws CacheError `CACHE_LOCKED` when another process or another open store in this process holds it.
   */
  static async open(directory: string, options: LevelStoreOptions = {}): Promise<LevelStore> {
    await mkdir(directory, { recursive: true });
    const { db, directory: real } = await openExclusive(directory);
    let state: { format: string; hasBlobs: boolean; files: boolean; identity: { dev: number; ino: number } };
    try {
      const { dev, ino } = await stat(real);
      const stored = await db.get(FORMAT_KEY);
      if (stored === undefined) await db.put(FORMAT_KEY, Buffer.from(FORMAT_PLAIN));
      const format = stored?.toString() ?? FORMAT_PLAIN;
      if (format !== FORMAT_PLAIN && format !== FORMAT_BLOBS) {
        throw new CacheError('CACHE_CORRUPT', `The cache database in ${real} has layout ${format}, which this version of hoard cannot read.`);
      }
      const first = await db.keys({ ...range(BLOB_PREFIX, ''), limit: 1 }).all();
      // Layout 1 may have files too: the first large value's, when a crash came before its record was written.
      const files = format === FORMAT_BLOBS || (await stat(join(real, 'blobs')).then(() => true, () => false));
      state = { format, hasBlobs: first.length > 0, files, identity: { dev, ino } };
    } catch (error) {
      // This open's own claim goes whatever the close does, so a failed open never leaves the directory held.
      await db.close().finally(() => releaseDirectory(real));
      throw error;
    }
    const store = new LevelStore(db, real, options, state);
    // Files of earlier opens that no record names: a write cut short by a crash, or a replaced value's file.
    if (state.files) store.#sweeping = store.#sweep();
    return store;
  }

  /** The bytes the in-memory layer keeps, and its budget. */
  memoryCache(): { bytes: number; limitBytes: number } {
    return { bytes: this.#memory?.bytes ?? 0, limitBytes: this.#memoryLimit };
  }

  read(scope: Scope, id: string): StoredRecord<EncodedValue> | undefined {
    if (this.#lost) throw this.#lost;
    const key = itemKey(scope, id);
    const kept = this.#memory?.get(key);
    if (kept) return kept;
    const raw = this.#get(levelKey(key));
    if (raw === undefined) return undefined;
    const { version, modified, encoding, bytes } = decodeFields(raw);
    if (version === RECORD_VERSION) {
      const record = { modified, value: { encoding, bytes } };
      this.#memory?.set(key, record, raw.length + key.length + ENTRY_OVERHEAD_BYTES);
      return record;
    }
    const { length, name } = decodePointer(bytes);
    const record = { modified, value: { encoding, bytes: this.#blobs.read(name, length) } };
    this.#memory?.set(key, record, length + key.length + ENTRY_OVERHEAD_BYTES);
    return record;
  }

  /**
   * Stores `record`. A large value's bytes are kept in memory as they are, not copied: the caller must not
   * change them afterwards.
   */
  async write(scope: Scope, id: string, record: StoredRecord<EncodedValue>): Promise<void> {
    // Refused writes fail before a value's file is written, and the current file is looked up once a reopen is over.
    if (this.#refusal || this.#lost || this.#reopening) await this.#writable();
    const key = itemKey(scope, id);
    const { bytes } = record.value;
    const replaced = this.#blobOf(key);
    if (bytes.byteLength < BLOB_MIN_BYTES) return this.#commits.add({ key, raw: encodeRecord(record), replaced });
    // A value's file goes nowhere but into the directory opened (a stat, next to writing 32 KiB or more).
    this.#checkDirectory();
    const name = this.#blobs.newName();
    try {
      await this.#blobs.write(name, bytes);
    } catch (error) {
      // A value file cannot be made in a directory that was deleted: that is the error to report.
      this.#checkDirectory();
      throw error;
    }
    this.#hasBlobs = true;
    // A view that would keep a much larger buffer alive in memory is copied to a buffer of its own.
    const kept = bytes.buffer.byteLength > 2 * bytes.byteLength ? Buffer.from(bytes) : bytes;
    const blob = { name, record: { modified: record.modified, value: { encoding: record.value.encoding, bytes: kept } }, bytes: kept.buffer.byteLength };
    // A failed batch may still have reached LevelDB's log, and so name the file after a restart: the file stays,
    // and the next open's sweep removes it if no record names it.
    await this.#commits.add({ key, raw: encodeBlobRecord(record, name), blob, replaced });
  }

  async delete(scope: Scope, id: string): Promise<void> {
    if (this.#refusal || this.#lost || this.#reopening) await this.#writable();
    const key = itemKey(scope, id);
    return this.#commits.add({ key, raw: undefined, replaced: this.#blobOf(key) });
  }

  /** While the database is closed to be reopened, a promise that settles once reads can go on; else `undefined`. */
  readsPaused(): Promise<void> | undefined {
    return this.#closedForReopen;
  }

  /** The file of `key`'s current value, if it has one; the caller holds the item's lock, so it cannot change. */
  #blobOf(key: string): string | undefined {
    return this.#hasBlobs ? this.#get(blobKey(key))?.toString('latin1') : undefined;
  }

  /** Reads one LevelDB entry synchronously, from its caches in microseconds. */
  #get(key: Buffer): Buffer | undefined {
    try {
      return this.#db.getSync(key);
    } catch (error) {
      if (this.#db.status !== 'open' && this.#refusal) {
        throw new CacheError('CACHE_STORAGE', `${this.#refusal.message} Reads fail too until then: the database could not be reopened.`, {
          cause: error,
        });
      }
      throw storageError('Cannot read from the cache database', error);
    }
  }

  /** Writes a group of puts and deletes, with their index entries and, with the first large value, the new layout. */
  async #writeBatch(writes: readonly PendingWrite[]): Promise<void> {
    // Writes queued before a failure reach here after it: they wait for the reopen, or are refused.
    if (this.#refusal || this.#lost || this.#reopening) await this.#writable();
    const operations: Operation[] = [];
    let formatChanged = false;
    for (const { key, raw, blob, replaced } of writes) {
      if (raw) operations.push({ type: 'put', key: levelKey(key), value: raw });
      else operations.push({ type: 'del', key: levelKey(key) });
      if (blob) operations.push({ type: 'put', key: blobKey(key), value: Buffer.from(blob.name, 'latin1') });
      else if (replaced !== undefined) operations.push({ type: 'del', key: blobKey(key) });
      if (blob && !this.#blobFormat) formatChanged = true;
    }
    if (formatChanged) operations.push({ type: 'put', key: FORMAT_KEY, value: Buffer.from(FORMAT_BLOBS) });
    await this.#commit(operations);
  }

  /**
   * Writes one LevelDB batch. It counts as written only if no other write failed while it ran (it may then follow
   * the damaged record in the log) and the directory is still the one opened.
   * @throws CacheError `CACHE_STORAGE` when it failed or writes are refused, `CACHE_DATA_DIRECTORY_LOST`.
   */
  async #commit(operations: Operation[]): Promise<void> {
    if (this.#lost) throw this.#lost;
    if (this.#refusal) throw this.#refusal;
    const failures = this.#failures;
    const writing = this.#db.batch(operations, this.#writeOptions);
    this.#inFlight.add(writing);
    try {
      await writing;
    } catch (error) {
      throw this.#failed(error);
    } finally {
      this.#inFlight.delete(writing);
    }
    if (this.#failures !== failures) throw this.#refusal ?? this.#lost ?? storageError('Cannot write to the cache database', 'another write failed');
    this.#checkDirectory();
  }

  /** Records a failed write: from now on writes are refused until the database is reopened. Returns the write's error. */
  #failed(cause: unknown): CacheError {
    this.#failures++;
    if (isCacheError(cause)) return cause;
    const error = storageError('Cannot write to the cache database', cause);
    // A write fails when its directory is gone: the store is lost rather than waiting for room.
    try {
      this.#checkDirectory();
    } catch (lost) {
      return lost as CacheError;
    }
    if (!this.#refusal) {
      const reason = cause instanceof Error ? cause.message : String(cause);
      this.#refusal = new CacheError(
        'CACHE_STORAGE',
        `Writes to the cache database in ${this.directory} are refused since one failed (${reason}); they resume once ` +
          'it has been reopened, which the next write tries when the disk has room.',
        { cause },
      );
      this.#retryAtMs = 0;
      this.#log(`writes refused: a write to the cache database in ${this.directory} failed (${reason}); reads go on, writes resume once the disk has room`);
    }
    return error;
  }

  /**
   * Resolves once writes may go on: at once, or once a failed write's database has been reopened.
   * @throws CacheError `CACHE_STORAGE` while writes are refused, `CACHE_DATA_DIRECTORY_LOST`.
   */
  async #writable(): Promise<void> {
    if (this.#lost) throw this.#lost;
    if (this.#refusal && !this.#reopening) {
      this.#reopening = this.#reopen().finally(() => (this.#reopening = undefined));
    }
    if (this.#reopening) await this.#reopening;
  }

  /**
   * Reopens the database after a failed write, once the disk has room: the open drops the log's damaged tail and
   * starts a new log. A write tries it; after an attempt that failed, the next waits {@link REOPEN_RETRY_MS}.
   */
  async #reopen(): Promise<void> {
    const refusal = this.#refusal!;
    this.#checkDirectory();
    const neededBytes = await this.#roomToReopen();
    if (neededBytes === undefined || Date.now() < this.#retryAtMs) throw refusal;
    if (!(await this.#probe(neededBytes))) {
      this.#retryAtMs = Date.now() + REOPEN_RETRY_MS;
      throw refusal;
    }
    // A write or clear still running goes first; those that start now see the refusal.
    await Promise.allSettled([this.#sweeping, ...this.#inFlight]);
    this.#checkDirectory();
    let reopened!: () => void;
    this.#closedForReopen = new Promise((resolve) => (reopened = resolve));
    try {
      if (this.#db.status === 'open') await this.#db.close();
      // Never created anew: a directory deleted meanwhile stays deleted.
      await this.#db.open({ createIfMissing: false });
    } catch (error) {
      this.#retryAtMs = Date.now() + REOPEN_RETRY_MS;
      const cause = (error as { cause?: { code?: unknown } }).cause;
      if (cause?.code === 'LEVEL_LOCKED') {
        throw this.#lose(`another process took the cache directory ${this.directory} while hoard reopened it`, error);
      }
      this.#checkDirectory();
      this.#log(`reopening the cache database in ${this.directory} failed (${String(cause ?? error)}); the next write tries again`);
      throw refusal;
    } finally {
      this.#closedForReopen = undefined;
      reopened();
    }
    // The open may have replayed a failed write: what memory holds is read again from the disk.
    this.#memory?.deleteWhere(() => true);
    this.#refusal = undefined;
    this.#log(`writes resumed: the cache database in ${this.directory} was reopened`);
  }

  /**
   * The bytes a reopen needs (a copy of the logs and manifest, and new ones) if the file system says it has them,
   * else `undefined`: a cheap look, made by every refused write.
   */
  async #roomToReopen(): Promise<number | undefined> {
    let neededBytes = REOPEN_SPARE_BYTES;
    try {
      for (const name of await readdir(this.directory)) {
        if (name.endsWith('.log') || name.startsWith('MANIFEST-')) neededBytes += (await stat(join(this.directory, name))).size;
      }
      const { bavail, bsize } = await statfs(this.directory);
      return bavail * bsize >= neededBytes ? neededBytes : undefined;
    } catch {
      return undefined;
    }
  }

  /** Whether a file of `bytes` can be written in the directory: a quota or a read-only disk shows only so. */
  async #probe(bytes: number): Promise<boolean> {
    // One name, so that a probe left by a crash is reused rather than piling up.
    const probe = join(this.directory, 'hoard-probe.tmp');
    try {
      const file = await openFile(probe, 'w', 0o600);
      try {
        const zeros = Buffer.alloc(64 * 1024);
        for (let at = 0; at < bytes; at += zeros.length) await file.write(zeros, 0, Math.min(zeros.length, bytes - at));
        await file.sync();
      } finally {
        await file.close().finally(() => rm(probe, { force: true }));
      }
      return true;
    } catch {
      return false;
    }
  }

  /**
   * Throws, and from then on fails every call, when the directory was deleted or replaced since the store opened it:
   * a write there would be lost, and the store never makes the directory anew.
   * @throws CacheError `CACHE_DATA_DIRECTORY_LOST`.
   */
  #checkDirectory(): void {
    if (this.#lost) throw this.#lost;
    let now: { dev: number; ino: number } | undefined;
    try {
      now = statSync(this.directory, { throwIfNoEntry: false });
    } catch {
      now = undefined;
    }
    if (now?.dev === this.#identity.dev && now.ino === this.#identity.ino) return;
    throw this.#lose(`the cache directory ${this.directory} was ${now ? 'replaced' : 'deleted'} while hoard had it open`);
  }

  /** Marks the store as lost for good, once, and tells its owner. */
  #lose(why: string, cause?: unknown): CacheError {
    if (!this.#lost) {
      this.#lost = new CacheError('CACHE_DATA_DIRECTORY_LOST', `${why[0]!.toUpperCase()}${why.slice(1)}: nothing more is written there.`, { cause });
      this.#log(`${why}: refusing every request, and not making the directory again`);
      this.#onLost?.(this.#lost);
    }
    return this.#lost;
  }

  /** The layer in memory changes only once the disk has: a failed write leaves the old record readable. */
  #written(writes: readonly PendingWrite[]): void {
    for (const { key, raw, blob, replaced } of writes) {
      if (blob) {
        // A batch with a large value's record leaves the layout at 2: it was already, or the batch recorded it.
        this.#blobFormat = true;
        this.#memory?.set(key, blob.record, blob.bytes + key.length + ENTRY_OVERHEAD_BYTES);
      } else if (raw) {
        this.#memory?.set(key, decodeRecord(raw), raw.length + key.length + ENTRY_OVERHEAD_BYTES);
      } else {
        this.#memory?.delete(key);
      }
      if (replaced !== undefined) this.#blobs.remove(replaced);
    }
  }

  #batchFailed(writes: readonly PendingWrite[], error: unknown): CacheError {
    for (const { key } of writes) this.#memory?.delete(key);
    return isCacheError(error) ? error : storageError('Cannot write to the cache database', error);
  }

  /**
   * Deletes the items of `scope` in batches written like every other write (with `sync`, synced: LevelDB's own
   * range delete never is).
   */
  async clear(scope: Scope): Promise<void> {
    if (this.#refusal || this.#lost || this.#reopening) await this.#writable();
    this.#memory?.deleteWhere((key) => key.startsWith(scope.prefix));
    const clearing = (async () => {
      if (this.#hasBlobs) await this.#clearBlobs(scope);
      await inChunks(this.#db.keys(range(ITEM_PREFIX, scope.prefix)), (keys) => this.#commit(keys.map((key) => ({ type: 'del' as const, key }))));
    })();
    this.#inFlight.add(clearing);
    try {
      await clearing;
    } catch (error) {
      throw isCacheError(error) ? error : storageError('Cannot clear the cache database', error);
    } finally {
      this.#inFlight.delete(clearing);
    }
  }

  /**
   * Deletes the items of `scope` that have files, each with its index entry in one batch, so that a crash
   * part way leaves every item whole or gone; then removes their files.
   */
  async #clearBlobs(scope: Scope): Promise<void> {
    await inChunks(this.#db.iterator(range(BLOB_PREFIX, scope.prefix)), async (entries) => {
      const operations = entries.flatMap(([key]) => [
        { type: 'del' as const, key },
        { type: 'del' as const, key: withPrefix(ITEM_PREFIX, key) },
      ]);
      await this.#commit(operations);
      for (const [, name] of entries) this.#blobs.remove(name.toString('latin1'));
    });
  }

  /** Removes the files of earlier opens that no index entry names; a failure leaves them for the next open. */
  async #sweep(): Promise<void> {
    try {
      const referenced = new Set<string>();
      await inChunks(this.#db.values(range(BLOB_PREFIX, '')), (names) => {
        for (const name of names) referenced.add(name.toString('latin1'));
      });
      await this.#blobs.sweep((name) => referenced.has(name));
    } catch {
      // The garbage stays until the next open: nothing a caller asked for depends on it.
    }
  }

  async close(): Promise<void> {
    await this.#reopening?.catch(() => {});
    // A sweep reads the index and lists the files once: closing waits for it rather than cutting it short.
    await this.#sweeping;
    await this.#blobs.removed();
    try {
      await this.#db.close();
    } finally {
      releaseDirectory(this.directory);
    }
  }
}
