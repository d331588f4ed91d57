import { mkdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { Level } from 'level';
import { CacheError, isCacheError, storageError } from '../errors.js';
import type { Scope } from '../scope-path.js';
import { itemKey } from '../scope-path.js';
import type { EncodedValue, Store, StoredRecord, StoreListing } from '../store.js';
import { BLOB_MIN_BYTES, BlobFiles } from './blob-files.js';
import { type HolderRole, openExclusive, releaseDirectory } from './exclusive-open.js';
import { GroupCommit } from './group-commit.js';
import { type LoosePath, makePrivate } from './make-private.js';
import { MemoryLayer } from './memory-layer.js';
import { directoryIdentity, type DirectoryIdentity, WriteGuard, writeError } from './write-guard.js';
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
}

/** One write of a batch: a put when `raw` is set, else a delete. */
interface PendingWrite {
  key: string;
  raw: Buffer | undefined;
  /** For a large value: its file, and the record that the memory layer keeps once the batch is written. */
  blob?: { name: string; record: StoredRecord<EncodedValue> };
  /** The file of the value that this write replaces or deletes, removed once the batch is written. */
  replaced: string | undefined;
}

/**
 * A {@link Store} of encoded values in a LevelDB directory that it holds exclusively while open. Recently used
 * records are also kept in memory, within a byte budget; the writes of one turn go to LevelDB as one batch.
 * Values of {@link BLOB_MIN_BYTES} or more go to files of their own in the directory's `blobs/`, so that
 * LevelDB's compactions, which rewrite every record several times over its life, move only their small records.
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
  /** Whether the database may hold `b` entries: until it does, writes need not look for a replaced file. */
  #hasBlobs: boolean;
  /** Whether the database's layout is already 2 (else the first large value's batch records it). */
  #blobFormat: boolean;
  readonly #commits = new GroupCommit<PendingWrite>({
    write: (writes) => this.#writeBatch(writes),
    written: (writes) => this.#written(writes),
    failed: (writes, error) => this.#failed(writes, error),
  });
  #sweeping: Promise<void> = Promise.resolve();
  readonly #guard: WriteGuard;

  private constructor(
    db: Level<Buffer, Buffer>,
    directory: string,
    options: LevelStoreOptions,
    state: { format: string; hasBlobs: boolean; loosePaths: LoosePath[]; identity: DirectoryIdentity },
  ) {
    this.#db = db;
    this.directory = directory;
    this.loosePaths = state.loosePaths;
    this.#guard = new WriteGuard({
      db,
      directory,
      identity: state.identity,
      log: options.log ?? (() => {}),
      onLost: options.onLost,
      // The reopen may have replayed a write that failed: what memory holds is read again from the disk.
      reopened: () => this.#memory?.deleteWhere(() => true),
      idle: () => this.#sweeping,
    });
    this.#writeOptions = { sync: options.sync ?? false };
    this.#memoryLimit = options.memoryCacheBytes ?? MEMORY_CACHE_BYTES;
    this.#memory = this.#memoryLimit > 0 ? new MemoryLayer({ maxBytes: this.#memoryLimit }) : undefined;
    this.#blobs = new BlobFiles(join(directory, 'blobs'), { sync: this.#writeOptions.sync });
    this.#hasBlobs = state.hasBlobs;
    this.#blobFormat = state.format === FORMAT_BLOBS;
  }

  /**
   * Opens (creating if needed, mode 0700) the database in `directory`, and makes the directory private if other
   * users could read it (see {@link LevelStore.loosePaths}).
   * @throws CacheError `CACHE_LOCKED` when another process or another open store in this process holds it.
   */
  static async open(directory: string, options: LevelStoreOptions = {}): Promise<LevelStore> {
    await mkdir(directory, { recursive: true, mode: 0o700 });
    const { db, directory: real } = await openExclusive(directory, options.holder);
    let state: { format: string; hasBlobs: boolean; files: boolean; loosePaths: LoosePath[]; identity: DirectoryIdentity };
    try {
      const loosePaths = await makePrivate(real);
      const identity = await directoryIdentity(real);
      const stored = await db.get(FORMAT_KEY);
      if (stored === undefined) await db.put(FORMAT_KEY, Buffer.from(FORMAT_PLAIN));
      const format = stored?.toString() ?? FORMAT_PLAIN;
      if (format !== FORMAT_PLAIN && format !== FORMAT_BLOBS) {
        throw new CacheError('CACHE_CORRUPT', `The cache database in ${real} has layout ${format}, which this version of hoard cannot read.`);
      }
      const first = await db.keys({ ...range(BLOB_PREFIX, ''), limit: 1 }).all();
      // Layout 1 may have files too: the first large value's, when a crash came before its record was written.
      const files = format === FORMAT_BLOBS || (await stat(join(real, 'blobs')).then(() => true, () => false));
      state = { format, hasBlobs: first.length > 0, files, loosePaths, identity };
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
    this.#guard.assertNotLost();
    const key = itemKey(scope, id);
    const kept = this.#memory?.get(key);
    if (kept) return kept;
    const raw = this.#get(levelKey(key));
    if (raw === undefined) return undefined;
    const { version, modified, encoding, bytes } = decodeFields(raw);
    if (version === RECORD_VERSION) {
      const record = { modified, value: { encoding, bytes } };
      this.#memory?.set(key, record);
      return record;
    }
    const { length, name } = decodePointer(bytes);
    const record = { modified, value: { encoding, bytes: this.#blobs.read(name, length) } };
    this.#memory?.set(key, record);
    return record;
  }

  /**
   * Stores `record`. A large value's bytes are kept in memory as they are, not copied: the caller must not
   * change them afterwards.
   */
  async write(scope: Scope, id: string, record: StoredRecord<EncodedValue>): Promise<void> {
    // A refused write fails before its value's file is written; the current file is looked up once a reopen is over.
    if (this.#guard.blocked) await this.#guard.writable();
    const key = itemKey(scope, id);
    const { bytes } = record.value;
    const replaced = this.#blobOf(key);
    if (bytes.byteLength < BLOB_MIN_BYTES) return this.#commits.add({ key, raw: encodeRecord(record), replaced });
    // A value's file goes nowhere but into the directory opened (a stat, next to writing 32 KiB or more).
    this.#guard.checkDirectory();
    const name = this.#blobs.newName();
    try {
      await this.#blobs.write(name, bytes);
    } catch (error) {
      // A value's file cannot be made in a directory that was deleted: that is the error to report.
      this.#guard.checkDirectory();
      throw error;
    }
    this.#hasBlobs = true;
    // The memory layer copies a view that would keep a much larger buffer alive, if it keeps the value at all.
    const blob = { name, record };
    // A failed batch may still have reached LevelDB's log, and so name the file after a restart: the file stays,
    // and the next open's sweep removes it if no record names it.
    await this.#commits.add({ key, raw: encodeBlobRecord(record, name), blob, replaced });
  }

  async delete(scope: Scope, id: string): Promise<void> {
    if (this.#guard.blocked) await this.#guard.writable();
    const key = itemKey(scope, id);
    return this.#commits.add({ key, raw: undefined, replaced: this.#blobOf(key) });
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

  /** Writes a group of puts and deletes, with their index entries and, with the first large value, the new layout. */
  async #writeBatch(writes: readonly PendingWrite[]): Promise<void> {
    // Writes queued before a failure get here after it: they wait for the reopen, or are refused.
    if (this.#guard.blocked) await this.#guard.writable();
    const operations: ({ type: 'put'; key: Buffer; value: Buffer } | { type: 'del'; key: Buffer })[] = [];
    let formatChanged = false;
    for (const { key, raw, blob, replaced } of writes) {
      if (raw) operations.push({ type: 'put', key: levelKey(key), value: raw });
      else operations.push({ type: 'del', key: levelKey(key) });
      if (blob) operations.push({ type: 'put', key: blobKey(key), value: Buffer.from(blob.name, 'latin1') });
      else if (replaced !== undefined) operations.push({ type: 'del', key: blobKey(key) });
      if (blob && !this.#blobFormat) formatChanged = true;
    }
    if (formatChanged) operations.push({ type: 'put', key: FORMAT_KEY, value: Buffer.from(FORMAT_BLOBS) });
    await this.#guard.commit(() => this.#db.batch(operations, this.#writeOptions));
  }

  /** The layer in memory changes only once the disk has: a failed write leaves the old record readable. */
  #written(writes: readonly PendingWrite[]): void {
    for (const { key, raw, blob, replaced } of writes) {
      if (blob) {
        // A batch with a large value's record leaves the layout at 2: it was already, or the batch recorded it.
        this.#blobFormat = true;
        this.#memory?.set(key, blob.record);
      } else if (raw) {
        this.#memory?.set(key, decodeRecord(raw));
      } else {
        this.#memory?.delete(key);
      }
      if (replaced !== undefined) this.#blobs.remove(replaced);
    }
  }

  #failed(writes: readonly PendingWrite[], error: unknown): CacheError {
    for (const { key } of writes) this.#memory?.delete(key);
    return writeError(error);
  }

  /**
   * Deletes the items of `scope` in batches written as every other write is (with `sync`, synced: LevelDB's own
   * range delete never is).
   */
  async clear(scope: Scope): Promise<void> {
    if (this.#guard.blocked) await this.#guard.writable();
    this.#memory?.deleteWhere((key) => key.startsWith(scope.prefix));
    try {
      await this.#guard.track(
        (async () => {
          if (this.#hasBlobs) await this.#clearBlobs(scope);
          await inChunks(this.#db.keys(range(ITEM_PREFIX, scope.prefix)), (keys) =>
            this.#guard.commit(() => this.#db.batch(keys.map((key) => ({ type: 'del' as const, key })), this.#writeOptions)),
          );
        })(),
      );
    } catch (error) {
      throw isCacheError(error) ? error : storageError('Cannot clear the cache database', error);
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
      await this.#guard.commit(() => this.#db.batch(operations, this.#writeOptions));
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

  async list(): Promise<StoreListing> {
    return { items: [], scopes: [], cursor: null };
  }

  async close(): Promise<void> {
    await this.#guard.settled();
    // A sweep reads the index and lists the files once: closing waits for it rather than cutting it short.
    await this.#sweeping;
    await this.#blobs.removed();
    try {
      await this.#db.close();
    } finally {
      await releaseDirectory(this.directory);
    }
  }
}
