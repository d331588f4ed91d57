import { mkdir, stat, statfs, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import type { Level } from 'level';
import { CacheError, isCacheError, storageError } from '../errors.js';
import type { Scope } from '../scope-path.js';
import { itemKey, parseItemKey, topScopeName } from '../scope-path.js';
import type {
  EncodedValue,
  ReferenceRecord,
  ScopeUsage,
  Store,
  StoredFile,
  StoredRecord,
  StoreListedItem,
  StoreListing,
  StoreUsage,
  VerifyReport,
} from '../store.js';
import { BatchBuilder, type Counter, type Operation } from './batch-builder.js';
import { BLOB_MIN_BYTES, BlobFiles } from './blob-files.js';
import { TempFiles } from '../temp-files.js';
import { type HolderRole, openExclusive, releaseDirectory } from './exclusive-open.js';
import { GroupCommit } from './group-commit.js';
import { type LoosePath, makePrivate } from './make-private.js';
import { MemoryLayer } from './memory-layer.js';
import { indexMatches, rebuildIndexes } from './rebuild-indexes.js';
import { directoryIdentity, type DirectoryIdentity, WriteGuard, writeError } from './write-guard.js';
import {
  BLOB_PREFIX,
  blobKey,
  COUNTER_PREFIX,
  countedBytes,
  decodeCounter,
  decodeFields,
  decodeMeta,
  decodePointer,
  decodeRecord,
  encodeBlobRecord,
  encodeFileRecord,
  encodeRecord,
  EXPIRY_PREFIX,
  FORMAT_BLOBS,
  FORMAT_COUNTED,
  FORMAT_KEY,
  FORMAT_PLAIN,
  inChunks,
  indexBound,
  indexedKey,
  indexKey,
  type ItemMeta,
  ITEM_PREFIX,
  levelKey,
  META_PREFIX,
  range,
  RECENCY_PREFIX,
  recordOf,
  topSegment,
  withPrefix,
} from './records.js';

/** The default budget of the in-memory layer of recently used records. */
export const MEMORY_CACHE_BYTES = 32 * 1024 * 1024;
/** The default size limit's ceiling (sccache's default); below it, a tenth of the file system (Nx's rule). */
export const MAX_DEFAULT_SIZE_BYTES = 10 * 1024 ** 3;
/** The default length of a recency bucket: an item's recency is persisted at most once per bucket. */
export const RECENCY_BUCKET_MS = 60_000;
/**
 * At most this many items are remembered as read in the current bucket; reads of further items in that bucket are
 * not recorded, so their recency is that of their last recorded use (approximate, never lost).
 */
export const MAX_TOUCHED_ITEMS = 100_000;
/** Touches are written at most once per this many milliseconds, or as soon as this many are pending. */
const TOUCH_FLUSH_MS = 1000;
const TOUCH_FLUSH_COUNT = 10_000;
/** A flush writes its touches in batches of at most this many, with a turn of the event loop between them. */
export const TOUCH_CHUNK = 1000;
/** leastRecent and expired read at most this many index entries past `limit` that they skip (strays), per call. */
const STRAY_SCAN_MAX = 10_000;
/** The removal of stray index entries goes in batches of at most this many, with a turn of the event loop between them. */
export const STRAY_CHUNK = 1000;
/** Verify's fixes go in batches of this many items. */
const FIX_CHUNK = 256;

export interface LevelStoreOptions {
  /**
   * Flush every write to the disk before acknowledging it, so that it survives a power loss, at a cost in speed;
   * default `false`: a write then survives a crash of the process, since it has reached the operating system.
   */
  sync?: boolean;
  /** The budget of the in-memory layer of recently used records, in bytes; 0 turns it off. Default 32 MiB. */
  memoryCacheBytes?: number;
  /** Who opens the store, as those who find the directory held are told; default a program's own `LevelCache`. */
  holder?: HolderRole;
  /** Where the store says why it refuses writes, and when it takes them again; default nowhere. */
  log?: (line: string) => void;
  /**
   * Called once when the directory is lost for good (deleted, replaced, or taken by another process while the store
   * reopened it): every later call fails with `CACHE_DATA_DIRECTORY_LOST`, and the owner should close the store.
   */
  onLost?: (error: CacheError) => void;
  /**
   * The size limit, in counted bytes (see {@link LevelStore.usage}): a value that alone takes more is refused. The
   * store only refuses such values and reports the figures; its owner evicts. Default: the smaller of 10 GiB and a
   * tenth of the file system that holds the directory; `Infinity`: none.
   */
  maxSizeBytes?: number;
  /** The length of a recency bucket, in milliseconds; default 60,000. */
  recencyBucketMs?: number;
  /** The clock, in milliseconds since the epoch; default `Date.now`. */
  now?: () => number;
}

/** One entry of a batch: an item's put or delete, or a job that adds its own operations when the batch is built. */
type PendingWrite =
  | {
      kind: 'put';
      key: string;
      raw: Buffer;
      meta: ItemMeta;
      /**
       * For a large value: its file, and the record that the memory layer keeps once the batch is written (none for a
       * file committed by reservation, whose bytes were never in memory).
       */
      blob?: { name: string; record?: StoredRecord<EncodedValue> };
      /** The file of the value that this write replaces, removed once the batch is written. */
      replaced: string | undefined;
    }
  | { kind: 'del'; key: string; replaced: string | undefined }
  | { kind: 'job'; build(batch: BatchBuilder): void; written?(): void };

/** Opens that skip the sweep of unreferenced files, so that verify reports them (only `verifyDirectory` makes these). */
const withoutSweep = new WeakSet<LevelStoreOptions>();

function checkOptions(options: LevelStoreOptions): void {
  const { maxSizeBytes, recencyBucketMs, now } = options;
  if (maxSizeBytes !== undefined && !(typeof maxSizeBytes === 'number' && maxSizeBytes > 0 && !Number.isNaN(maxSizeBytes))) {
    throw new TypeError(`maxSizeBytes must be a number of bytes above 0, or Infinity for no limit; got ${String(maxSizeBytes)}.`);
  }
  if (recencyBucketMs !== undefined && !(Number.isSafeInteger(recencyBucketMs) && recencyBucketMs > 0)) {
    throw new TypeError(`recencyBucketMs must be a whole number of milliseconds above 0; got ${String(recencyBucketMs)}.`);
  }
  if (now !== undefined && typeof now !== 'function') throw new TypeError('now must be a function that returns milliseconds.');
}

/** The default size limit for a directory: the smaller of 10 GiB and a tenth of its file system. */
async function defaultSizeLimit(directory: string): Promise<number> {
  try {
    const { blocks, bsize } = await statfs(directory);
    return Math.min(MAX_DEFAULT_SIZE_BYTES, Math.floor((blocks * bsize) / 10));
  } catch {
    return MAX_DEFAULT_SIZE_BYTES;
  }
}

/** The name of a top-level scope from its escaped form in keys. */
function scopeName(segment: string): string {
  return segment === '' ? '' : topScopeName(`${segment}/:`);
}

function overLimit(sizeBytes: number, limitBytes: number): CacheError {
  return new CacheError(
    'CACHE_OVER_SIZE_LIMIT',
    `The value takes ${sizeBytes} bytes as stored, more than the cache's whole size limit of ${limitBytes} bytes; it was not stored.`,
  );
}

/** A record's counted size and stale time; a damaged record counts for what it takes in the database. */
function recordFacts(recordKey: Buffer, raw: Buffer): { sizeBytes: number; staleUntilMs: number | undefined } {
  try {
    return { sizeBytes: countedBytes(recordKey, raw), staleUntilMs: decodeFields(raw).staleUntilMs };
  } catch {
    return { sizeBytes: recordKey.length + raw.length, staleUntilMs: undefined };
  }
}

/**
 * A {@link Store} of encoded values in a LevelDB directory that it holds exclusively while open. Recently used
 * records are also kept in memory, within a byte budget; the writes of one turn go to LevelDB as one batch.
 * Values of {@link BLOB_MIN_BYTES} or more go to files of their own in the directory's `blobs/`, so that
 * LevelDB's compactions, which rewrite every record several times over its life, move only their small records.
 * It counts what each top-level scope takes, exactly, in the batch of every change; it records when items were
 * last used, coarsely (see {@link LevelStoreOptions.recencyBucketMs}), and when they expire, in indexes that
 * {@link LevelStore.leastRecent} and {@link LevelStore.expired} read; it evicts and expires nothing itself.
 * Its {@link WriteGuard} refuses writes after a failed one until the database is reopened, and every call once the
 * directory is deleted or replaced.
 */
export class LevelStore implements Store<EncodedValue> {
  readonly #db: Level<Buffer, Buffer>;
  readonly directory: string;
  /** What other users could read or enter when the store opened; it is private now, unless `madePrivate` says not. */
  readonly loosePaths: readonly LoosePath[];
  readonly #writeOptions: { sync: boolean };
  readonly #memory: MemoryLayer | undefined;
  readonly #memoryLimit: number;
  readonly #blobs: BlobFiles;
  /** The reservations of {@link LevelStore.reserve}, in `<directory>/temp/`. */
  readonly #temp: TempFiles;
  /** Whether the database may hold `b` entries: until it does, writes need not look for a replaced file. */
  #hasBlobs: boolean;
  readonly #commits = new GroupCommit<PendingWrite>({
    write: (writes) => this.#writeBatch(writes),
    written: (writes) => this.#written(writes),
    failed: (writes, error) => this.#failed(writes, error),
  });
  #sweeping: Promise<void> = Promise.resolve();
  readonly #guard: WriteGuard;
  readonly #limitBytes: number;
  readonly #bucketMs: number;
  /** The clock of the `now` option; `undefined` for `Date.now`, called directly on the read path (a call through a field costs more). */
  readonly #now: (() => number) | undefined;
  /** The counted figures by top-level scope (its escaped name), as the `c` entries say; and their sums. */
  #counters = new Map<string, Counter>();
  #totalBytes = 0;
  #totalItems = 0;
  /** What {@link LevelStore.usage} gave last, while no counter changed since. */
  #usage: StoreUsage | undefined;
  /** Set when a reopen may have replayed a batch that had failed: the next batch reads the counters again first. */
  #countersStale = false;
  /** The counters of the batch being written, applied once it is. */
  #batchCounters: Map<string, Counter | undefined> | undefined;
  /** The current recency bucket, and the items used in it so far (at most {@link MAX_TOUCHED_ITEMS}). */
  #bucketStartMs = -Infinity;
  #touched = new Set<string>();
  /**
   * With the default clock, reads look at the clock only once a timer set for the bucket's end has run (a call of
   * `Date.now` cost a third of a hit in the memory layer); until then they take the current bucket, so a read in the
   * moments between the bucket's end and the timer (the event loop's lag) counts in the bucket just ended. Writes
   * always look at the clock.
   */
  #bucketMayBeOver = true;
  #bucketTimer: NodeJS.Timeout | undefined;
  /** Touches not yet written: item key -> bucket start. */
  #pendingTouches = new Map<string, number>();
  #touchTimer: NodeJS.Timeout | undefined;
  /** {@link LevelStore.#touch} in the current bucket, made once for the memory layer's hits. */
  readonly #touchInBucket = (key: string): void => this.#touch(key, this.#bucketStartMs);
  #touchesWritten: Promise<void> = Promise.resolve();
  #closing = false;
  readonly #log: (line: string) => void;
  /** Whether this open has logged that items with damaged or missing meta entries were found. */
  #damagedMetaLogged = false;
  /** Files written by this open whose batch has not been written yet, and the sets that verify runs watch. */
  readonly #filesUnderWay = new Set<string>();
  readonly #fileWatches = new Set<Set<string>>();

  private constructor(
    db: Level<Buffer, Buffer>,
    directory: string,
    options: LevelStoreOptions,
    state: { hasBlobs: boolean; loosePaths: LoosePath[]; identity: DirectoryIdentity; limitBytes: number; counters: Map<string, Counter> },
  ) {
    this.#db = db;
    this.directory = directory;
    this.loosePaths = state.loosePaths;
    this.#log = options.log ?? (() => {});
    this.#guard = new WriteGuard({
      db,
      directory,
      identity: state.identity,
      log: options.log ?? (() => {}),
      onLost: options.onLost,
      // The reopen may have replayed a write that failed: what memory holds is read again from the disk.
      reopened: () => {
        this.#memory?.deleteWhere(() => true);
        this.#countersStale = true;
      },
      idle: () => this.#sweeping,
    });
    this.#writeOptions = { sync: options.sync ?? false };
    this.#memoryLimit = options.memoryCacheBytes ?? MEMORY_CACHE_BYTES;
    this.#memory = this.#memoryLimit > 0 ? new MemoryLayer({ maxBytes: this.#memoryLimit }) : undefined;
    this.#blobs = new BlobFiles(join(directory, 'blobs'), { sync: this.#writeOptions.sync });
    this.#temp = new TempFiles(join(directory, 'temp'));
    this.#hasBlobs = state.hasBlobs;
    this.#limitBytes = state.limitBytes;
    this.#bucketMs = options.recencyBucketMs ?? RECENCY_BUCKET_MS;
    this.#now = options.now;
    this.#setCounters(state.counters);
  }

  /**
   * Opens (creating if needed, mode 0700) the database in `directory`, and makes the directory private if other
   * users could read it (see {@link LevelStore.loosePaths}). A database of layout 1 or 2 (hoard 0.3 and before) is
   * brought to layout 3 first: its sizes and indexes are counted from its records, once.
   * @throws CacheError `CACHE_LOCKED` when another process or another open store in this process holds it.
   * @throws TypeError for a `maxSizeBytes` or `recencyBucketMs` that is not a number above 0.
   */
  static async open(directory: string, options: LevelStoreOptions = {}): Promise<LevelStore> {
    checkOptions(options);
    await mkdir(directory, { recursive: true, mode: 0o700 });
    const { db, directory: real } = await openExclusive(directory, options.holder);
    let state: { hasBlobs: boolean; files: boolean; loosePaths: LoosePath[]; identity: DirectoryIdentity; limitBytes: number; counters: Map<string, Counter> };
    try {
      const loosePaths = await makePrivate(real);
      const identity = await directoryIdentity(real);
      const stored = (await db.get(FORMAT_KEY))?.toString();
      if (stored === undefined) await db.put(FORMAT_KEY, Buffer.from(FORMAT_COUNTED));
      else if (stored === FORMAT_PLAIN || stored === FORMAT_BLOBS) {
        options.log?.(`Bringing the cache database in ${real} from layout ${stored} to layout ${FORMAT_COUNTED}: counting its items once.`);
        const items = await rebuildIndexes(db, { nowMs: (options.now ?? Date.now)(), recencyBucketMs: options.recencyBucketMs ?? RECENCY_BUCKET_MS });
        options.log?.(`The cache database in ${real} is now of layout ${FORMAT_COUNTED}: ${items} items counted.`);
      } else if (stored !== FORMAT_COUNTED) {
        throw new CacheError('CACHE_CORRUPT', `The cache database in ${real} has layout ${stored}, which this version of hoard cannot read.`);
      }
      const first = await db.keys({ ...range(BLOB_PREFIX, ''), limit: 1 }).all();
      // Files may be there without entries: the first large value's, when a crash came before its record was written.
      const files = await stat(join(real, 'blobs')).then(() => true, () => false);
      const limitBytes = options.maxSizeBytes ?? (await defaultSizeLimit(real));
      const counters = await readCounters(db, (segments) =>
        options.log?.(`${segments} counter entries of the cache database in ${real} are damaged: counted as 0 until verify mends them (hoard verify).`),
      );
      state = { hasBlobs: first.length > 0, files, loosePaths, identity, limitBytes, counters };
    } catch (error) {
      // This open's own claim goes whatever the close does, so a failed open never leaves the directory held.
      await db.close().finally(() => releaseDirectory(real));
      throw error;
    }
    const store = new LevelStore(db, real, options, state);
    // Files of earlier opens that no record names: a write cut short by a crash, or a replaced value's file.
    if (state.files && !withoutSweep.has(options)) store.#sweeping = store.#sweep();
    // Reservations of earlier opens: values being written when the process stopped, never committed.
    if (!withoutSweep.has(options)) {
      const sweeping = store.#sweeping;
      store.#sweeping = Promise.all([sweeping, store.#temp.sweep()]).then(() => {});
    }
    return store;
  }

  /** The bytes the in-memory layer keeps, and its budget. */
  memoryCache(): { bytes: number; limitBytes: number } {
    return { bytes: this.#memory?.bytes ?? 0, limitBytes: this.#memoryLimit };
  }

  read(scope: Scope, id: string): StoredRecord<EncodedValue> | undefined {
    return this.#read(itemKey(scope, id), false) as StoredRecord<EncodedValue> | undefined;
  }

  /**
   * Like {@link LevelStore.read}, but a value kept in a file is not read: its record names the file instead (and is
   * not kept in the memory layer, which holds values' bytes). A record already in the memory layer comes whole.
   * @throws CacheError `CACHE_CORRUPT` for a damaged record (a missing file is found by whoever opens it).
   */
  readReference(scope: Scope, id: string): StoredRecord<EncodedValue> | ReferenceRecord | undefined {
    return this.#read(itemKey(scope, id), true);
  }

  /** {@link LevelStore.read} or {@link LevelStore.readReference} by the item's storage key: see {@link Store.readKey}. */
  readKey(key: string, byReference: boolean): StoredRecord<EncodedValue> | ReferenceRecord | undefined {
    return this.#read(key, byReference);
  }

  #read(key: string, byReference: boolean): StoredRecord<EncodedValue> | ReferenceRecord | undefined {
    this.#guard.assertNotLost();
    const bucket = this.#now === undefined && !this.#bucketMayBeOver ? this.#bucketStartMs : this.#bucket();
    // A hit in the memory layer touches the item only the first time in this bucket: the entry keeps the bucket.
    const kept = this.#memory?.getMarked(key, bucket, this.#touchInBucket);
    if (kept) return kept;
    const raw = this.#get(levelKey(key));
    if (raw === undefined) return undefined;
    const fields = decodeFields(raw);
    let record: StoredRecord<EncodedValue>;
    if (fields.inFile) {
      const { length, name } = decodePointer(fields.bytes);
      const file = { name, lengthBytes: length };
      if (byReference) {
        const { modified, encoding, expiresAtMs, staleUntilMs } = fields;
        this.#touch(key, bucket);
        return expiresAtMs === undefined ? { modified, encoding, file } : { modified, encoding, file, expiresAtMs, staleUntilMs };
      }
      record = { ...recordOf(fields, this.#blobs.read(name, length)), file };
    } else {
      record = recordOf(fields, fields.bytes);
    }
    this.#memory?.set(key, record, bucket);
    this.#touch(key, bucket);
    return record;
  }

  /** See {@link Store.checkFile}. */
  checkFile(file: StoredFile): void {
    this.#blobs.check(file.name, file.lengthBytes);
  }

  /** Keeps a value's file until the returned function is called: see {@link Store.pin}. */
  pin(file: StoredFile): () => void {
    return this.#blobs.pin(file.name, file.lengthBytes);
  }

  /** The bytes of a value's file, checked against its length (`CACHE_CORRUPT` when missing or short). */
  readFile(file: StoredFile): Buffer {
    return this.#blobs.read(file.name, file.lengthBytes);
  }

  /** The absolute path of a value's file. */
  filePath(name: string): string {
    return join(this.#blobs.directory, name);
  }

  /** The start of the current recency bucket, starting a new bucket (and forgetting the items used) when it is over. */
  #bucket(): number {
    const nowMs = this.#now ? this.#now() : Date.now();
    if (nowMs >= this.#bucketStartMs + this.#bucketMs || nowMs < this.#bucketStartMs) {
      this.#bucketStartMs = Math.floor(nowMs / this.#bucketMs) * this.#bucketMs;
      this.#touched = new Set();
      if (this.#now === undefined && !this.#closing) {
        clearTimeout(this.#bucketTimer);
        this.#bucketMayBeOver = false;
        this.#bucketTimer = setTimeout(() => (this.#bucketMayBeOver = true), this.#bucketStartMs + this.#bucketMs - nowMs).unref();
      }
    }
    return this.#bucketStartMs;
  }

  /** Records a use of `key`, once per bucket: the touch is written later, with others. */
  #touch(key: string, bucket: number): void {
    if (this.#touched.has(key) || this.#touched.size >= MAX_TOUCHED_ITEMS || this.#closing) return;
    this.#touched.add(key);
    this.#pendingTouches.set(key, bucket);
    if (this.#pendingTouches.size >= TOUCH_FLUSH_COUNT) void this.#flushTouches();
    else this.#touchTimer ??= setTimeout(() => void this.#flushTouches(), TOUCH_FLUSH_MS).unref();
  }

  /**
   * Writes the pending touches through the same queue as every write, in batches of at most {@link TOUCH_CHUNK} with
   * a turn of the event loop between them, so that building them never holds the loop long; an item gone meanwhile
   * is skipped. Resolves once every touch pending until now is written (or lost with a failed batch).
   */
  #flushTouches(): Promise<void> {
    clearTimeout(this.#touchTimer);
    this.#touchTimer = undefined;
    if (this.#pendingTouches.size === 0) return this.#touchesWritten;
    const touches = [...this.#pendingTouches];
    this.#pendingTouches = new Map();
    const written = this.#writeTouches(touches);
    this.#touchesWritten = Promise.all([this.#touchesWritten, written]).then(() => {});
    return this.#touchesWritten;
  }

  async #writeTouches(touches: readonly (readonly [string, number])[]): Promise<void> {
    for (let at = 0; at < touches.length; at += TOUCH_CHUNK) {
      if (at > 0) await new Promise((resolve) => setImmediate(resolve));
      const chunk = touches.slice(at, at + TOUCH_CHUNK);
      const build = (batch: BatchBuilder): void => {
        for (const [key, bucket] of chunk) {
          const meta = batch.meta(key);
          if (meta && meta.accessedAtMs < bucket) batch.setMeta(key, { ...meta, accessedAtMs: bucket });
        }
      };
      // Touches are best effort: a batch that fails loses them, and the items keep their older buckets.
      await this.#commits.add({ kind: 'job', build }).catch(() => {});
    }
  }

  /**
   * Stores `record`. A large value's bytes are kept in memory as they are, not copied: the caller must not
   * change them afterwards.
   * @throws CacheError `CACHE_OVER_SIZE_LIMIT`, before anything is written, when the item alone would take more than
   * the size limit.
   */
  async write(scope: Scope, id: string, record: StoredRecord<EncodedValue>): Promise<void> {
    // A refused write fails before its value's file is written; the current file is looked up once a reopen is over.
    if (this.#guard.blocked) await this.#guard.writable();
    const key = itemKey(scope, id);
    const keyBytes = Buffer.byteLength(key) + 1;
    const { bytes } = record.value;
    const staleUntilMs = record.expiresAtMs === undefined ? undefined : (record.staleUntilMs ?? record.expiresAtMs);
    if (bytes.byteLength < BLOB_MIN_BYTES) {
      const raw = encodeRecord(record);
      const sizeBytes = keyBytes + raw.length;
      if (sizeBytes > this.#limitBytes) throw overLimit(sizeBytes, this.#limitBytes);
      const meta = { sizeBytes, accessedAtMs: this.#written1(key), staleUntilMs };
      return this.#commits.add({ kind: 'put', key, raw, meta, replaced: this.#blobOf(key) });
    }
    const name = this.#blobs.newName();
    const raw = encodeBlobRecord(record, name);
    const sizeBytes = keyBytes + raw.length + bytes.byteLength;
    if (sizeBytes > this.#limitBytes) throw overLimit(sizeBytes, this.#limitBytes);
    const replaced = this.#blobOf(key);
    // A value's file goes nowhere but into the directory opened (a stat, next to writing 32 KiB or more).
    this.#guard.checkDirectory();
    this.#filesUnderWay.add(name);
    for (const watch of this.#fileWatches) watch.add(name);
    try {
      try {
        await this.#blobs.write(name, bytes);
      } catch (error) {
        // A value's file cannot be made in a directory that was deleted: that is the error to report.
        this.#guard.checkDirectory();
        throw error;
      }
      this.#hasBlobs = true;
      // The memory layer copies a view that would keep a much larger buffer alive, if it keeps the value at all.
      const blob = { name, record: { ...record, file: { name, lengthBytes: bytes.byteLength } } };
      // A failed batch may still have reached LevelDB's log, and so name the file after a restart: the file stays,
      // and the next open's sweep removes it if no record names it.
      const meta = { sizeBytes, accessedAtMs: this.#written1(key), staleUntilMs };
      await this.#commits.add({ kind: 'put', key, raw, meta, blob, replaced });
    } finally {
      this.#filesUnderWay.delete(name);
    }
  }

  /**
   * Reserves an empty private file (0600, in `<directory>/temp/`, 0700) for a value that another process may write,
   * then {@link LevelStore.writeFile} commits; it is removed by {@link LevelStore.discard}, at close, or by the next
   * open after a crash.
   * @throws CacheError `CACHE_STORAGE`, `CACHE_UNSAFE_DIRECTORY`.
   */
  async reserve(): Promise<{ reservation: number; path: string }> {
    this.#guard.checkDirectory();
    return this.#temp.reserve();
  }

  /** Removes an uncommitted reservation's file; an unknown or committed reservation is left alone. */
  discard(reservation: number): Promise<void> {
    return this.#temp.discard(reservation);
  }

  /**
   * Appends `bytes` to reservation `reservation`'s file at `offsetBytes` (see {@link TempFiles.append}); its bytes count
   * toward the size limit at once.
   */
  append(reservation: number, offsetBytes: number, bytes: Uint8Array): Promise<void> {
    this.#guard.checkDirectory();
    return this.#temp.append(reservation, offsetBytes, bytes);
  }

  /** Reads the size of the reservations other processes write, so that they count toward the size limit. */
  measureReserved(): Promise<void> {
    return this.#temp.measure();
  }

  /** How many reservations are open (neither committed nor discarded). */
  get reservations(): number {
    return this.#temp.size;
  }

  /**
   * Stores the file of reservation `reservation` as the value of `record` (whose `value` names only its encoding),
   * without reading it when it is large: once checked (a regular file of this user with one link) it is made
   * read-only and moved into the store, and resolves once a restart would find it. A crash at any point leaves the
   * old value or the new one, and no file that no record names after the next open's sweeps.
   * @throws CacheError `CACHE_FILE_REFUSED` (nothing written; the reservation stays unless the file was swapped
   * during the commit), `CACHE_VALUE_TOO_LARGE`, `CACHE_OVER_SIZE_LIMIT`, `CACHE_STORAGE`.
   */
  async writeFile(scope: Scope, id: string, record: StoredRecord<{ readonly encoding: string }>, reservation: number): Promise<void> {
    if (this.#guard.blocked) await this.#guard.writable();
    const key = itemKey(scope, id);
    const keyBytes = Buffer.byteLength(key) + 1;
    const opened = await this.#temp.open(reservation);
    try {
      const staleUntilMs = record.expiresAtMs === undefined ? undefined : (record.staleUntilMs ?? record.expiresAtMs);
      if (opened.sizeBytes < BLOB_MIN_BYTES) {
        // A small value is kept inline, as one written with its bytes would be: read through the checked descriptor.
        const bytes = await opened.readAll();
        await this.write(scope, id, { ...record, value: { encoding: record.value.encoding, bytes } });
        opened.consumed();
        await unlink(opened.path).catch(() => {});
        return;
      }
      const name = this.#blobs.newName();
      const raw = encodeFileRecord(record, name, opened.sizeBytes);
      const sizeBytes = keyBytes + raw.length + opened.sizeBytes;
      if (sizeBytes > this.#limitBytes) throw overLimit(sizeBytes, this.#limitBytes);
      await opened.seal({ sync: this.#writeOptions.sync });
      this.#guard.checkDirectory();
      const replaced = this.#blobOf(key);
      this.#filesUnderWay.add(name);
      for (const watch of this.#fileWatches) watch.add(name);
      try {
        try {
          await this.#blobs.adopt(opened.path, opened.fd, name, opened.sizeBytes);
        } catch (error) {
          // A file swapped or linked during the commit was moved out of temp/ and removed: the reservation is spent.
          if (isCacheError(error, 'CACHE_FILE_REFUSED')) opened.consumed();
          throw error;
        }
        opened.consumed();
        this.#hasBlobs = true;
        const meta = { sizeBytes, accessedAtMs: this.#written1(key), staleUntilMs };
        await this.#commits.add({ kind: 'put', key, raw, meta, blob: { name }, replaced });
      } finally {
        this.#filesUnderWay.delete(name);
      }
    } finally {
      await opened.close();
    }
  }

  /** A write's recency bucket: the current one, in which the item then counts as used. */
  #written1(key: string): number {
    const bucket = this.#bucket();
    if (this.#touched.size < MAX_TOUCHED_ITEMS) this.#touched.add(key);
    this.#pendingTouches.delete(key);
    return bucket;
  }

  async delete(scope: Scope, id: string): Promise<void> {
    if (this.#guard.blocked) await this.#guard.writable();
    const key = itemKey(scope, id);
    return this.#commits.add({ kind: 'del', key, replaced: this.#blobOf(key) });
  }

  /**
   * Deletes the items of `scope` named by `ids` as `delete` does each, in one batch: a page of a scope's items costs
   * one LevelDB write, not one per item. The caller holds each item's lock.
   */
  async deleteMany(scope: Scope, ids: readonly string[]): Promise<void> {
    if (ids.length === 0) return;
    if (this.#guard.blocked) await this.#guard.writable();
    // Queued in one turn: the group commit writes them as one batch (with whatever else was queued in that turn).
    await Promise.all(
      ids.map((id) => {
        const key = itemKey(scope, id);
        return this.#commits.add({ kind: 'del', key, replaced: this.#blobOf(key) });
      }),
    );
  }

  /**
   * Checks that the directory is still the one opened (a stat, microseconds): writes check it themselves, and a
   * periodic call notices a directory deleted while the store only reads (which never looks at it) or is idle. If it
   * is not, the store is lost and `onLost` runs.
   * @throws CacheError `CACHE_DATA_DIRECTORY_LOST`.
   */
  checkDirectory(): void {
    this.#guard.checkDirectory();
  }

  /** While the database is closed to be reopened after a failed write, a promise that settles once reads can go on. */
  readsPaused(): Promise<void> | undefined {
    return this.#guard.readsPaused();
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
      throw this.#guard.readError(error);
    }
  }

  sizeOf(key: string): number | undefined {
    // An item whose meta entry is damaged or missing counts for its record, as its delete will.
    return (this.#readMeta(key) ?? this.#recordMeta(key))?.sizeBytes;
  }

  /** An item's meta entry; a damaged one reads as missing (verify reports and mends it). */
  #readMeta(key: string): ItemMeta | undefined {
    const meta = this.#readMetaEntry(key);
    return meta === 'damaged' ? undefined : meta;
  }

  #readMetaEntry(key: string): ItemMeta | undefined | 'damaged' {
    const raw = this.#get(Buffer.from(META_PREFIX + key, 'utf8'));
    if (raw === undefined) return undefined;
    try {
      return decodeMeta(raw);
    } catch {
      return 'damaged';
    }
  }

  /**
   * What item `key` counts for by its record (and file), for one whose meta entry is damaged or missing; its recency
   * is unknown (`NaN`). `undefined` when there is no record.
   */
  #recordMeta(key: string): ItemMeta | undefined {
    const recordKey = levelKey(key);
    const raw = this.#get(recordKey);
    if (raw === undefined) return undefined;
    try {
      return { sizeBytes: countedBytes(recordKey, raw), accessedAtMs: Number.NaN, staleUntilMs: decodeFields(raw).staleUntilMs };
    } catch {
      // A damaged record counts for what it takes in the database.
      return { sizeBytes: recordKey.length + raw.length, accessedAtMs: Number.NaN, staleUntilMs: undefined };
    }
  }

  #setCounters(counters: Map<string, Counter>): void {
    this.#usage = undefined;
    this.#counters = counters;
    this.#totalBytes = 0;
    this.#totalItems = 0;
    for (const { bytes, items } of counters.values()) {
      this.#totalBytes += bytes;
      this.#totalItems += items;
    }
  }

  /**
   * Builds and writes one batch: the queued puts and deletes with their meta, index and counter entries, and the
   * jobs' own operations (touches, a chunk of a clear, verify's fixes). Batches are built and written one at a time,
   * so the old meta and counters read here are what the database holds.
   */
  async #writeBatch(writes: readonly PendingWrite[]): Promise<void> {
    // Writes queued before a failure get here after it: they wait for the reopen, or are refused.
    if (this.#guard.blocked) await this.#guard.writable();
    if (this.#countersStale) {
      this.#setCounters(await readCounters(this.#db));
      this.#countersStale = false;
    }
    const batch = new BatchBuilder({ readMeta: (key) => this.#readMetaEntry(key), recordMeta: (key) => this.#recordMeta(key) });
    for (const write of writes) {
      if (write.kind === 'job') {
        write.build(batch);
        continue;
      }
      const { key, replaced } = write;
      if (write.kind === 'put') {
        batch.put(levelKey(key), write.raw);
        if (write.blob) batch.put(blobKey(key), Buffer.from(write.blob.name, 'latin1'));
        else if (replaced !== undefined) batch.del(blobKey(key));
        batch.setMeta(key, write.meta);
      } else {
        batch.del(levelKey(key));
        if (replaced !== undefined) batch.del(blobKey(key));
        batch.setMeta(key, undefined);
      }
    }
    const counters = batch.finishCounters(this.#counters);
    if (batch.operations.length === 0) return;
    this.#batchCounters = counters;
    await this.#guard.commit(() => this.#writeOperations(batch.operations));
  }

  /**
   * Writes `operations` through LevelDB's chained batch, which hands each one to the native batch as it comes: an
   * array batch copies and checks every operation with its options first, which cost 4x as much for small writes.
   */
  async #writeOperations(operations: readonly Operation[]): Promise<void> {
    const chained = this.#db.batch();
    try {
      for (const operation of operations) {
        if (operation.type === 'put') chained.put(operation.key, operation.value);
        else chained.del(operation.key);
      }
    } catch (error) {
      await chained.close();
      throw error;
    }
    await chained.write(this.#writeOptions);
  }

  /** The layer in memory changes only once the disk has: a failed write leaves the old record readable. */
  #written(writes: readonly PendingWrite[]): void {
    const counters = this.#batchCounters;
    this.#batchCounters = undefined;
    if (counters && counters.size > 0) {
      this.#usage = undefined;
      for (const [segment, next] of counters) {
        const old = this.#counters.get(segment);
        this.#totalBytes += (next?.bytes ?? 0) - (old?.bytes ?? 0);
        this.#totalItems += (next?.items ?? 0) - (old?.items ?? 0);
        if (next) this.#counters.set(segment, next);
        else this.#counters.delete(segment);
      }
    }
    for (const write of writes) {
      if (write.kind === 'job') {
        write.written?.();
        continue;
      }
      const { key, replaced } = write;
      if (write.kind === 'put') {
        if (!write.blob) this.#memory?.set(key, decodeRecord(write.raw), write.meta.accessedAtMs);
        else if (write.blob.record) this.#memory?.set(key, write.blob.record, write.meta.accessedAtMs);
        else this.#memory?.delete(key);
      } else {
        this.#memory?.delete(key);
      }
      if (replaced !== undefined) this.#blobs.remove(replaced);
    }
  }

  #failed(writes: readonly PendingWrite[], error: unknown): CacheError {
    this.#batchCounters = undefined;
    for (const write of writes) if (write.kind !== 'job') this.#memory?.delete(write.key);
    return writeError(error);
  }

  /**
   * Deletes the items of `scope` in batches written as every other write is (with `sync`, synced: LevelDB's own
   * range delete never is), each item with its file's index entry, meta and index entries and its size.
   */
  async clear(scope: Scope): Promise<void> {
    if (this.#guard.blocked) await this.#guard.writable();
    this.#memory?.deleteWhere((key) => key.startsWith(scope.prefix));
    try {
      await inChunks(this.#db.keys(range(ITEM_PREFIX, scope.prefix)), async (keys) => {
        const files: string[] = [];
        const build = (batch: BatchBuilder): void => {
          for (const recordKey of keys) {
            batch.del(recordKey);
            if (this.#hasBlobs) {
              const index = withPrefix(BLOB_PREFIX, recordKey);
              const name = this.#get(index);
              if (name !== undefined) {
                batch.del(index);
                files.push(name.toString('latin1'));
              }
            }
            batch.setMeta(recordKey.toString('utf8', 1), undefined);
          }
        };
        await this.#commits.add({ kind: 'job', build, written: () => files.forEach((name) => this.#blobs.remove(name)) });
      });
    } catch (error) {
      throw isCacheError(error) ? error : storageError('Cannot clear the cache database', error);
    }
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

  /**
   * The counted figures now, from memory: an item counts for its record's key and value in LevelDB and its file's
   * length (index entries are not counted), by top-level scope.
   */
  usage(): StoreUsage {
    const pinnedBytes = this.#blobs.deferredBytes;
    const reservedBytes = this.#temp.reservedBytes;
    if (this.#usage && this.#usage.pinnedBytes === pinnedBytes && this.#usage.reservedBytes === reservedBytes) return this.#usage;
    const scopes = new Map<string, ScopeUsage>();
    for (const [segment, { bytes, items }] of this.#counters) scopes.set(scopeName(segment), Object.freeze({ bytes, items }));
    this.#usage = Object.freeze({ bytes: this.#totalBytes, items: this.#totalItems, limitBytes: this.#limitOrNull(), scopes, pinnedBytes, reservedBytes });
    return this.#usage;
  }

  /**
   * The counted bytes and the size limit, in constant time whatever the number of scopes. The bytes include the files
   * of replaced or removed values that wait for a handle ({@link StoreUsage.pinnedBytes}) and those of open
   * reservations ({@link StoreUsage.reservedBytes}): they take the disk too.
   */
  totals(): { bytes: number; limitBytes: number | null } {
    return { bytes: this.#totalBytes + this.#blobs.deferredBytes + this.#temp.reservedBytes, limitBytes: this.#limitOrNull() };
  }

  #limitOrNull(): number | null {
    return Number.isFinite(this.#limitBytes) ? this.#limitBytes : null;
  }

  /** The counted figures of `scope` and its nested scopes, from its items' meta entries. */
  async scopeUsage(scope: Scope): Promise<ScopeUsage> {
    const usage = { bytes: 0, items: 0 };
    await inChunks(this.#db.values(range(META_PREFIX, scope.prefix)), (values) => {
      for (const raw of values) {
        try {
          usage.bytes += decodeMeta(raw).sizeBytes;
        } catch {
          // Counted as an item; verify reports and mends the entry.
        }
        usage.items++;
      }
    });
    return usage;
  }

  /**
   * Up to `limit` item keys, least recently used first (by bucket, then key order), after `cursor`.
   * @throws TypeError for a cursor that this method did not give.
   */
  async leastRecent(options: { cursor?: string; limit: number }): Promise<{ keys: string[]; next: string | null }> {
    const { gte, lt } = range(RECENCY_PREFIX, '');
    let after: Buffer | undefined;
    if (options.cursor !== undefined) {
      after = Buffer.from(options.cursor, 'base64url');
      if (after.length < 8 || after[0] !== gte[0] || after.toString('base64url') !== options.cursor) throw new TypeError('Not a cursor of leastRecent.');
    }
    // Reads not yet written count: an item read a moment ago is not listed by an older use.
    await this.#flushTouches();
    const { keys, last, more } = await this.#indexed({ ...(after ? { gt: after } : { gte }), lt }, options.limit);
    return { keys, next: more ? last!.toString('base64url') : null };
  }

  /** Up to `limit` keys of items whose `staleUntilMs` is at or before `nowMs`, the earliest first. */
  async expired(nowMs: number, limit: number): Promise<string[]> {
    return (await this.#indexed({ gte: Buffer.from(EXPIRY_PREFIX), lt: indexBound(EXPIRY_PREFIX, nowMs) }, limit)).keys;
  }

  /**
   * The item keys of up to `limit` index entries in `bounds` that their items call for: by their meta entries, or, for
   * an item whose meta entry is damaged or missing, by its record (any recency entry; the expiry entry of its record's
   * time). Entries that no item calls for (no record, another time) are skipped, at most {@link STRAY_SCAN_MAX} a
   * call, and removed in the background through the write queue. `more`: entries may follow `last`, the last one read.
   */
  async #indexed(bounds: { gt?: Buffer; gte?: Buffer; lt: Buffer }, limit: number): Promise<{ keys: string[]; last: Buffer | undefined; more: boolean }> {
    const keys: string[] = [];
    const strays: Buffer[] = [];
    let damagedMeta = false;
    let last: Buffer | undefined;
    let more = true;
    const iterator = this.#db.keys(bounds);
    try {
      while (keys.length < limit && strays.length < STRAY_SCAN_MAX) {
        const page = await iterator.nextv(Math.min(1000, limit - keys.length));
        if (page.length === 0) {
          more = false;
          break;
        }
        for (const indexed of page) {
          const called = this.#calledFor(indexed, (key) => this.#readMeta(key));
          if (called === 'stray') {
            strays.push(indexed);
          } else {
            keys.push(indexedKey(indexed));
            damagedMeta ||= called === 'by record';
          }
        }
        last = page.at(-1);
      }
    } finally {
      await iterator.close();
    }
    if (damagedMeta && !this.#damagedMetaLogged) {
      this.#damagedMetaLogged = true;
      this.#log(
        `Items of the cache database in ${this.directory} have damaged or missing meta entries: they are evicted and expired by their records, and verify mends the entries (hoard verify).`,
      );
    }
    if (strays.length > 0) void this.#removeStrays(strays);
    return { keys, last, more: more && last !== undefined };
  }

  /**
   * Whether an index entry is called for by its item's meta entry (`metaOf`), by its record when that meta entry is
   * damaged or missing, or by nothing (a stray).
   */
  #calledFor(indexed: Buffer, metaOf: (key: string) => ItemMeta | undefined): 'by meta' | 'by record' | 'stray' {
    if (indexMatches(indexed, (metaKey) => metaOf(metaKey.toString('utf8', 1)))) return 'by meta';
    const key = indexedKey(indexed);
    if (metaOf(key) !== undefined) return 'stray';
    const fromRecord = this.#recordMeta(key);
    if (!fromRecord) return 'stray';
    if (indexed[0] === RECENCY_PREFIX.charCodeAt(0)) return 'by record';
    const staleUntilMs = fromRecord.staleUntilMs;
    return staleUntilMs !== undefined && indexKey(EXPIRY_PREFIX, staleUntilMs, key).equals(indexed) ? 'by record' : 'stray';
  }

  /**
   * Removes stray index entries through the write queue, in batches of at most {@link STRAY_CHUNK} with a turn of the
   * event loop between them; each is checked again when its batch is built, since a write may have made it the right one.
   */
  async #removeStrays(strays: readonly Buffer[]): Promise<void> {
    for (let at = 0; at < strays.length; at += STRAY_CHUNK) {
      if (at > 0) await new Promise((resolve) => setImmediate(resolve));
      if (this.#closing) return;
      const chunk = strays.slice(at, at + STRAY_CHUNK);
      const build = (batch: BatchBuilder): void => {
        for (const indexed of chunk) if (this.#calledFor(indexed, (key) => batch.meta(key)) === 'stray') batch.del(indexed);
      };
      // Best effort: entries left are found again by the next listing.
      const written = await this.#commits.add({ kind: 'job', build }).then(
        () => true,
        () => false,
      );
      if (!written) return;
    }
  }

  /**
   * One page of `scope`'s items and nested scope names in key order after `cursor`, expired items included. A
   * nested scope is named once, from its items, and its subtree is then skipped by seeking past it, so a page costs
   * at most `limit` entries read whatever the scope holds.
   * @throws TypeError for a cursor that is not one of this scope's.
   */
  async list(scope: Scope, options: { cursor?: string; limit: number }): Promise<StoreListing> {
    const { prefix } = scope;
    const bounds = range(META_PREFIX, prefix);
    let start: { gt: Buffer } | { gte: Buffer } = { gte: bounds.gte };
    if (options.cursor !== undefined) {
      const last = Buffer.from(options.cursor, 'base64url').toString('utf8');
      const rest = last.startsWith(prefix) ? last.slice(prefix.length) : undefined;
      if (rest === undefined || Buffer.from(last, 'utf8').toString('base64url') !== options.cursor) throw new TypeError('Not a cursor of this scope.');
      if (rest.startsWith(':')) start = { gt: Buffer.from(META_PREFIX + last, 'utf8') };
      else if (/^[^/:]+\/$/.test(rest)) start = { gte: range(META_PREFIX, last).lt };
      else throw new TypeError('Not a cursor of this scope.');
    }
    const items: StoreListedItem[] = [];
    const scopes: string[] = [];
    let last: string | undefined;
    let more = false;
    const iterator = this.#db.iterator({ ...start, lt: bounds.lt });
    try {
      for (let entry = await iterator.next(); entry; entry = await iterator.next()) {
        if (items.length + scopes.length >= options.limit) {
          more = true;
          break;
        }
        const [metaKey, metaValue] = entry;
        const key = metaKey.toString('utf8', 1);
        const rest = key.slice(prefix.length);
        if (!rest.startsWith(':')) {
          const nested = prefix + rest.slice(0, rest.indexOf('/') + 1);
          scopes.push(parseItemKey(`${nested}:`).scope.path.at(-1)!);
          last = nested;
          iterator.seek(range(META_PREFIX, nested).lt);
          continue;
        }
        // The item may have gone since the iterator's snapshot; a damaged record or meta is listed by verify, not here.
        const raw = this.#get(withPrefix(ITEM_PREFIX, metaKey));
        if (raw === undefined) continue;
        let fields: ReturnType<typeof decodeFields>;
        let meta: ItemMeta;
        try {
          fields = decodeFields(raw);
          meta = decodeMeta(metaValue);
        } catch {
          continue;
        }
        const item: StoreListedItem = { id: parseItemKey(key).id, sizeBytes: meta.sizeBytes, modified: fields.modified, accessedAtMs: meta.accessedAtMs };
        items.push(fields.expiresAtMs === undefined ? item : { ...item, expiresAtMs: fields.expiresAtMs });
        last = key;
      }
    } finally {
      await iterator.close();
    }
    return { items, scopes, cursor: more && last !== undefined ? Buffer.from(last, 'utf8').toString('base64url') : null };
  }

  /**
   * Recounts every item from one snapshot of the database and compares with the counters kept; reports stray or
   * missing meta and index entries, and files that no item names (those of writes under way in this open aside). With
   * `fix`, mends them through the same queue as every write (so it may run while the store serves), and removes the
   * unnamed files.
   */
  async verify(options: { fix: boolean }): Promise<VerifyReport> {
    this.#guard.assertNotLost();
    await this.#sweeping;
    const watch = new Set(this.#filesUnderWay);
    this.#fileWatches.add(watch);
    const snapshot = this.#db.snapshot();
    const inSnapshot = { snapshot };
    const kept = new Map<string, Counter>();
    const counted = new Map<string, Counter>();
    const ofMetas = new Map<string, Counter>();
    const referenced = new Set<string>();
    const damagedCounters = new Set<string>();
    const itemsToFix: string[] = [];
    const indexesToCheck: Buffer[] = [];
    const add = (to: Map<string, Counter>, segment: string, bytes: number): void => {
      const counter = to.get(segment) ?? { bytes: 0, items: 0 };
      counter.bytes += bytes;
      counter.items++;
      to.set(segment, counter);
    };
    const metaIn = (metaKey: Buffer): ItemMeta | undefined => {
      const raw = this.#db.getSync(metaKey, inSnapshot);
      if (raw === undefined) return undefined;
      try {
        return decodeMeta(raw);
      } catch {
        return undefined;
      }
    };
    let orphans: string[];
    try {
      await inChunks(this.#db.iterator({ ...range(COUNTER_PREFIX, ''), snapshot }), (entries) => {
        for (const [key, value] of entries) {
          const segment = key.toString('utf8', 1);
          try {
            kept.set(segment, decodeCounter(value));
          } catch {
            // Counted as nothing (as the store does since its open), reported as drift and rewritten by fix.
            kept.set(segment, { bytes: 0, items: 0 });
            damagedCounters.add(segment);
          }
        }
      });
      await inChunks(this.#db.values({ ...range(BLOB_PREFIX, ''), snapshot }), (names) => {
        for (const name of names) referenced.add(name.toString('latin1'));
      });
      await inChunks(this.#db.iterator({ ...range(ITEM_PREFIX, ''), snapshot }), (entries) => {
        for (const [recordKey, raw] of entries) {
          const key = recordKey.toString('utf8', 1);
          const { sizeBytes, staleUntilMs } = recordFacts(recordKey, raw);
          add(counted, topSegment(key), sizeBytes);
          const meta = metaIn(withPrefix(META_PREFIX, recordKey));
          if (meta?.sizeBytes !== sizeBytes || meta.staleUntilMs !== staleUntilMs) itemsToFix.push(key);
        }
      });
      await inChunks(this.#db.iterator({ ...range(META_PREFIX, ''), snapshot }), (entries) => {
        for (const [metaKey, value] of entries) {
          const key = metaKey.toString('utf8', 1);
          let meta: ItemMeta | undefined;
          try {
            meta = decodeMeta(value);
          } catch {
            meta = undefined;
          }
          // An item whose meta entry is damaged counts for its record, as its delete or mending will take it; a
          // meta entry with no record is a stray.
          const record = this.#db.getSync(withPrefix(ITEM_PREFIX, metaKey), inSnapshot);
          if (meta) add(ofMetas, topSegment(key), meta.sizeBytes);
          else if (record !== undefined) add(ofMetas, topSegment(key), recordBytes(withPrefix(ITEM_PREFIX, metaKey), record));
          if (!meta || record === undefined) {
            if (meta) itemsToFix.push(key);
            continue;
          }
          const indexes = [{ prefix: RECENCY_PREFIX, ms: meta.accessedAtMs }];
          if (meta.staleUntilMs !== undefined) indexes.push({ prefix: EXPIRY_PREFIX, ms: meta.staleUntilMs });
          if (indexes.some(({ prefix, ms }) => this.#db.getSync(indexKey(prefix, ms, key), inSnapshot) === undefined)) itemsToFix.push(key);
        }
      });
      for (const prefix of [RECENCY_PREFIX, EXPIRY_PREFIX]) {
        await inChunks(this.#db.keys({ ...range(prefix, ''), snapshot }), (keys) => {
          for (const indexed of keys) if (!indexMatches(indexed, metaIn)) indexesToCheck.push(indexed);
        });
      }
      orphans = (await this.#blobs.list()).filter(
        (name) =>
          !referenced.has(name) && !watch.has(name) && !this.#filesUnderWay.has(name) && !this.#blobs.isBeingRemoved(name) && !this.#blobs.isPinned(name),
      );
    } finally {
      this.#fileWatches.delete(watch);
      await snapshot.close();
    }
    let orphanBytes = 0;
    for (const name of orphans) orphanBytes += await stat(join(this.#blobs.directory, name)).then((file) => file.size, () => 0);
    const segments = new Set([...kept.keys(), ...counted.keys(), ...ofMetas.keys()]);
    const sum = (of: Map<string, Counter>): ScopeUsage => {
      const total = { bytes: 0, items: 0 };
      for (const { bytes, items } of of.values()) {
        total.bytes += bytes;
        total.items += items;
      }
      return total;
    };
    const same = (a: Counter | undefined, b: Counter | undefined): boolean => (a?.bytes ?? 0) === (b?.bytes ?? 0) && (a?.items ?? 0) === (b?.items ?? 0);
    const driftedScopes = [...segments].filter((segment) => damagedCounters.has(segment) || !same(kept.get(segment), counted.get(segment))).map(scopeName);
    const uniqueItemsToFix = [...new Set(itemsToFix)];
    if (options.fix) {
      // The counters against the meta entries: every batch since the snapshot changed both alike, so the difference
      // then is the difference now. The items' own meta entries are then mended, each with its counter change.
      const build = (batch: BatchBuilder): void => {
        for (const segment of segments) {
          const metas = ofMetas.get(segment) ?? { bytes: 0, items: 0 };
          const counters = kept.get(segment) ?? { bytes: 0, items: 0 };
          batch.adjust(segment, { bytes: metas.bytes - counters.bytes, items: metas.items - counters.items });
        }
        for (const segment of damagedCounters) batch.rewriteCounter(segment);
      };
      await this.#commits.add({ kind: 'job', build });
      for (let at = 0; at < uniqueItemsToFix.length; at += FIX_CHUNK) {
        const keys = uniqueItemsToFix.slice(at, at + FIX_CHUNK);
        await this.#commits.add({ kind: 'job', build: (batch) => keys.forEach((key) => this.#mendItem(batch, key)) });
      }
      for (let at = 0; at < indexesToCheck.length; at += FIX_CHUNK) {
        const indexed = indexesToCheck.slice(at, at + FIX_CHUNK);
        const build = (batch: BatchBuilder): void => {
          for (const entry of indexed) {
            if (!indexMatches(entry, (metaKey) => batch.meta(metaKey.toString('utf8', 1)))) batch.del(entry);
          }
        };
        await this.#commits.add({ kind: 'job', build });
      }
      for (const name of orphans) this.#blobs.remove(name);
      await this.#blobs.removed();
    }
    return {
      kept: sum(kept),
      counted: sum(counted),
      driftedScopes,
      orphanFiles: orphans.length,
      orphanBytes,
      strayEntries: uniqueItemsToFix.length + indexesToCheck.length,
      fixed: options.fix,
    };
  }

  /** Makes item `key`'s meta and index entries (and its counter) say what its record now holds, or go if it has none. */
  #mendItem(batch: BatchBuilder, key: string): void {
    const recordKey = levelKey(key);
    const raw = this.#get(recordKey);
    if (raw === undefined) {
      batch.setMeta(key, undefined);
      return;
    }
    const { sizeBytes, staleUntilMs } = recordFacts(recordKey, raw);
    const old = batch.meta(key);
    batch.setMeta(key, { sizeBytes, staleUntilMs, accessedAtMs: old?.accessedAtMs ?? this.#bucket() }, { rewriteIndexes: true });
  }

  async close(): Promise<void> {
    this.#closing = true;
    clearTimeout(this.#bucketTimer);
    // The touches of this open are kept, as far as the database takes them.
    await this.#flushTouches();
    await this.#guard.settled();
    // A sweep reads the index and lists the files once: closing waits for it rather than cutting it short.
    await this.#sweeping;
    // Handles end with the store: the files that waited for them go now (or, if this fails, at the next open's sweep).
    this.#blobs.removeDeferred();
    await this.#blobs.removed();
    await this.#temp.discardAll();
    try {
      await this.#db.close();
    } finally {
      await releaseDirectory(this.directory);
    }
  }
}

/** The counters that the database's `c` entries hold. */
async function readCounters(db: Level<Buffer, Buffer>, damaged?: (segments: number) => void): Promise<Map<string, Counter>> {
  const counters = new Map<string, Counter>();
  let damagedSegments = 0;
  await inChunks(db.iterator(range(COUNTER_PREFIX, '')), (entries) => {
    for (const [key, value] of entries) {
      try {
        counters.set(key.toString('utf8', 1), decodeCounter(value));
      } catch {
        // A damaged counter counts as none; verify reports the drift and mends it.
        damagedSegments++;
      }
    }
  });
  if (damagedSegments > 0) damaged?.(damagedSegments);
  return counters;
}

/** What an item counts for by its record, or, for a damaged record, what it takes in the database. */
function recordBytes(recordKey: Buffer, raw: Buffer): number {
  try {
    return countedBytes(recordKey, raw);
  } catch {
    return recordKey.length + raw.length;
  }
}

/**
 * Recounts the store in `directory` from its data, and with `fix` mends what differs and removes the files that
 * nothing names; for a directory that no daemon or program holds (it opens it as `hoard repair` does).
 * @throws CacheError `CACHE_LOCKED`, naming the holder when it can, while a daemon or another program has it open.
 */
export async function verifyDirectory(directory: string, options: { fix: boolean }): Promise<VerifyReport> {
  const openOptions: LevelStoreOptions = { holder: { role: 'repair' }, memoryCacheBytes: 0, maxSizeBytes: Infinity };
  withoutSweep.add(openOptions);
  const store = await LevelStore.open(directory, openOptions);
  try {
    return await store.verify(options);
  } finally {
    await store.close();
  }
}
