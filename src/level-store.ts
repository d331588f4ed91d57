import { mkdir, readFile, realpath, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { Level } from 'level';
import { BLOB_MIN_BYTES, BlobFiles } from './blob-files.js';
import { CacheError, storageError } from './errors.js';
import type { Scope } from './scope-path.js';
import { itemKey } from './scope-path.js';
import type { EncodedValue, Store, StoredRecord } from './store.js';
import { LruMap } from './lru-map.js';

/**
 * The LevelDB layout. Item keys are `i` + the UTF-8 of `scope-path.ts`'s key; `m` + name holds metadata
 * (`mformat`: the layout version). An item's stored value is one record:
 * byte 0 the record version, bytes 1-8 `modified` as a little-endian float64, byte 9 the length n of
 * the encoding name, then n bytes of the name in ASCII; then, in version 1, the value's bytes; in version 2
 * (a value of {@link BLOB_MIN_BYTES} or more), the value's length as a little-endian uint32 and the name of
 * the file in `blobs/` that holds it, in ASCII. Such an item also has `b` + its key, whose value is that
 * file name: the index that `clear` and the sweep of unreferenced files read. Layout 2 is layout 1 with
 * version 2 records, and a database takes it with its first large value.
 */
const ITEM_PREFIX = 'i';
const BLOB_PREFIX = 'b';
const FORMAT_KEY = Buffer.from('mformat');
const FORMAT_PLAIN = '1';
const FORMAT_BLOBS = '2';
const RECORD_VERSION = 1;
const BLOB_RECORD_VERSION = 2;
const HEADER_BYTES = 10;
/** Iterations over a range (a clear, the sweep, repair) take this many entries at a time. */
const CLEAR_CHUNK = 1000;

function levelKey(key: string): Buffer {
  return Buffer.from(ITEM_PREFIX + key, 'utf8');
}

function blobKey(key: string): Buffer {
  return Buffer.from(BLOB_PREFIX + key, 'utf8');
}

/** The keys from `prefix` + `start` up to, not including, the first key past every key that starts with it. */
function range(prefix: string, start: string): { gte: Buffer; lt: Buffer } {
  const gte = Buffer.from(prefix + start, 'utf8');
  // No UTF-8 byte is 0xFF, so this bound follows every key that starts with `gte`.
  return { gte, lt: Buffer.concat([gte, Buffer.from([0xff])]) };
}

/** The same item's key under the other one-byte prefix: its record's key for its index entry's, and the other way round. */
function withPrefix(prefix: string, key: Buffer): Buffer {
  return Buffer.concat([Buffer.from(prefix), key.subarray(1)]);
}

/** Hands an iterator's entries to `each` in chunks of {@link CLEAR_CHUNK}, and closes it whatever happens. */
async function inChunks<T>(
  iterator: { nextv(size: number): Promise<T[]>; close(): Promise<void> },
  each: (chunk: T[]) => Promise<void> | void,
): Promise<void> {
  try {
    for (;;) {
      const chunk = await iterator.nextv(CLEAR_CHUNK);
      if (chunk.length === 0) return;
      await each(chunk);
    }
  } finally {
    await iterator.close();
  }
}

/** The default budget of the in-memory layer of recently used records. */
export const MEMORY_CACHE_BYTES = 32 * 1024 * 1024;
/** What an entry of the in-memory layer costs beyond its value's bytes: key, record and map overhead. */
const ENTRY_OVERHEAD_BYTES = 160;

export interface LevelStoreOptions {
  /**
   * Flush every write to the disk before acknowledging it, so that it survives a power loss, at a cost in speed;
   * default `false`: a write then survives a crash of the process, since it has reached the operating system.
   */
  sync?: boolean;
  /** The budget of the in-memory layer of recently used records, in bytes; 0 turns it off. Default 32 MiB. */
  memoryCacheBytes?: number;
}

/** One write of a batch: a put when `raw` is set, else a delete. */
interface PendingWrite {
  key: string;
  raw: Buffer | undefined;
  /** For a large value: its file, and the record that the memory layer keeps once the batch is written. */
  blob?: { name: string; record: StoredRecord<EncodedValue>; bytes: number };
  /** The file of the value that this write replaces or deletes, removed once the batch is written. */
  replaced: string | undefined;
  resolve(): void;
  reject(error: unknown): void;
}

/** Writes a record's header (version, `modified`, encoding name) into `out`; returns where the rest begins. */
function writeHeader(out: Buffer, version: number, record: StoredRecord<EncodedValue>): number {
  const { encoding } = record.value;
  out[0] = version;
  out.writeDoubleLE(record.modified, 1);
  out[9] = encoding.length;
  out.write(encoding, HEADER_BYTES, 'latin1');
  return HEADER_BYTES + encoding.length;
}

export function encodeRecord(record: StoredRecord<EncodedValue>): Buffer {
  const { encoding, bytes } = record.value;
  // Not from the shared pool: a record kept in memory must not keep a pool slab of other records alive.
  const out = Buffer.allocUnsafeSlow(HEADER_BYTES + encoding.length + bytes.byteLength);
  out.set(bytes, writeHeader(out, RECORD_VERSION, record));
  return out;
}

/** The record of a value kept in the file `blob`: its bytes are not in it. */
function encodeBlobRecord(record: StoredRecord<EncodedValue>, blob: string): Buffer {
  const out = Buffer.allocUnsafe(HEADER_BYTES + record.value.encoding.length + 4 + blob.length);
  const at = writeHeader(out, BLOB_RECORD_VERSION, record);
  out.writeUInt32LE(record.value.bytes.byteLength, at);
  out.write(blob, at + 4, 'latin1');
  return out;
}

function damaged(): CacheError {
  return new CacheError('CACHE_CORRUPT', 'A stored record is damaged or was written by a newer version of hoard.');
}

/** What a version-2 record holds after its header: the value's length and the name of the file that holds it. */
function decodePointer(rest: Buffer): { length: number; name: string } {
  if (rest.length < 5) throw damaged();
  return { length: rest.readUInt32LE(0), name: rest.toString('latin1', 4) };
}

/** A record's fields; `bytes` is the value itself in version 1, and the rest of the record in version 2. */
function decodeFields(raw: Buffer): { version: number; modified: number; encoding: string; bytes: Buffer } {
  const version = raw[0];
  if (raw.length < HEADER_BYTES || (version !== RECORD_VERSION && version !== BLOB_RECORD_VERSION) || raw.length < HEADER_BYTES + raw[9]!) {
    throw damaged();
  }
  const nameEnd = HEADER_BYTES + raw[9]!;
  return { version, modified: raw.readDoubleLE(1), encoding: raw.toString('latin1', HEADER_BYTES, nameEnd), bytes: raw.subarray(nameEnd) };
}

export function decodeRecord(raw: Buffer): StoredRecord<EncodedValue> {
  const { version, modified, encoding, bytes } = decodeFields(raw);
  if (version !== RECORD_VERSION) throw damaged();
  return { modified, value: { encoding, bytes } };
}

/** The directories this process holds open, shared by every copy of this module in the process's main realm. */
const openDirectories: Set<string> = ((globalThis as Record<symbol, unknown>)[Symbol.for('hoard.openLevelDirectories')] ??=
  new Set<string>()) as Set<string>;

/** Whether a thread of this process (a worker, say) holds LevelDB's lock on `directory`, as `/proc/locks` tells. */
async function heldByThisProcess(directory: string): Promise<boolean> {
  let inode: bigint;
  try {
    inode = (await stat(join(directory, 'LOCK'), { bigint: true })).ino;
  } catch {
    return false;
  }
  let locks: string;
  try {
    locks = await readFile('/proc/locks', 'utf8');
  } catch {
    return false;
  }
  // Lines look like `1: POSIX  ADVISORY  WRITE 1234 fd:01:5678 0 EOF`.
  return locks.split('\n').some((line) => {
    const fields = line.trim().split(/\s+/);
    const device = fields.find((field) => /^[0-9a-f]+:[0-9a-f]+:\d+$/i.test(field));
    const pid = fields[fields.indexOf(device ?? '') - 1];
    return device !== undefined && pid === String(process.pid) && BigInt(device.split(':')[2]!) === inode;
  });
}

function lockedError(directory: string, cause?: unknown): CacheError {
  return new CacheError(
    'CACHE_LOCKED',
    `The cache directory ${directory} is open in another process or another LevelCache. ` +
      'LevelDB allows one user at a time: to share a cache between processes, run the hoard daemon and connect() to it.',
    { cause },
  );
}

/** Turns LevelDB's refusal to open `directory` into an error that names the directory and the remedy. */
function openError(directory: string, error: unknown): CacheError {
  const cause = (error as { cause?: { code?: unknown; message?: unknown } }).cause;
  if (cause?.code === 'LEVEL_LOCKED') return lockedError(directory, error);
  if (cause?.code === 'LEVEL_CORRUPTION') {
    return new CacheError(
      'CACHE_CORRUPT',
      `The cache database in ${directory} is damaged (${String(cause.message)}). Run \`hoard repair --data-dir ${directory}\` ` +
        'to recover what can be recovered, or delete the directory: it only holds a cache.',
      { cause: error },
    );
  }
  return new CacheError(
    'CACHE_STORAGE',
    `Cannot open the cache database in ${directory}: ${String(cause?.message ?? error)}. Check that the directory is ` +
      'readable and writable by you, or choose another one (--data-dir, HOARD_DATA_DIR).',
    { cause: error },
  );
}

/**
 * Runs LevelDB's repair on `directory`, recovering what it can of a damaged database.
 * @throws CacheError `CACHE_LOCKED` while a daemon or another program has the database open.
 */
export async function repairLevelStore(directory: string): Promise<void> {
  const real = await realpath(directory);
  if (openDirectories.has(real) || (await heldByThisProcess(real))) throw lockedError(real);
  // Opening takes LevelDB's lock, which tells whether anyone holds the database; a damaged one may not open at all.
  const probe = new Level<Buffer, Buffer>(real, { keyEncoding: 'buffer', valueEncoding: 'buffer' });
  openDirectories.add(real);
  try {
    await probe.open();
    await probe.close();
  } catch (error) {
    if ((error as { cause?: { code?: unknown } }).cause?.code === 'LEVEL_LOCKED') throw lockedError(real, error);
  } finally {
    openDirectories.delete(real);
  }
  try {
    // `Level` is classic-level's class on Node, whose static `repair` its typings leave out.
    await (Level as unknown as { repair(location: string): Promise<void> }).repair(real);
    const db = new Level<Buffer, Buffer>(real, { keyEncoding: 'buffer', valueEncoding: 'buffer' });
    try {
      await rebuildBlobIndex(db);
    } finally {
      await db.close();
    }
  } catch (error) {
    throw storageError(`Cannot repair the cache database in ${real}`, error);
  }
}

/**
 * Makes the `b` index name exactly the files that the records name. Repair may keep a record and lose its index
 * entry (they sort into different tables), and the sweep would then remove a file still in use. Entries are added
 * before stale ones go, so that at no moment does the index miss a file a record names.
 */
async function rebuildBlobIndex(db: Level<Buffer, Buffer>): Promise<void> {
  const named = new Map<string, string>();
  await inChunks(db.iterator(range(ITEM_PREFIX, '')), async (entries) => {
    const operations: { type: 'put'; key: Buffer; value: Buffer }[] = [];
    for (const [key, raw] of entries) {
      let name: string;
      try {
        const fields = decodeFields(raw);
        if (fields.version !== BLOB_RECORD_VERSION) continue;
        name = decodePointer(fields.bytes).name;
      } catch {
        continue;
      }
      const index = withPrefix(BLOB_PREFIX, key);
      named.set(index.toString('latin1'), name);
      operations.push({ type: 'put', key: index, value: Buffer.from(name, 'latin1') });
    }
    if (operations.length > 0) await db.batch(operations);
  });
  await inChunks(db.iterator(range(BLOB_PREFIX, '')), async (entries) => {
    const stale = entries.filter(([key, name]) => named.get(key.toString('latin1')) !== name.toString('latin1'));
    if (stale.length > 0) await db.batch(stale.map(([key]) => ({ type: 'del' as const, key })));
  });
}

/**
 * A {@link Store} of encoded values in a LevelDB directory that it holds exclusively while open. Recently used
 * records are also kept in memory, within a byte budget; the writes of one turn go to LevelDB as one batch.
 * Values of {@link BLOB_MIN_BYTES} or more go to files of their own in the directory's `blobs/`, so that
 * LevelDB's compactions, which rewrite every record several times over its life, move only their small records.
 */
export class LevelStore implements Store<EncodedValue> {
  readonly #db: Level<Buffer, Buffer>;
  readonly directory: string;
  readonly #writeOptions: { sync: boolean };
  readonly #memory: LruMap<string, StoredRecord<EncodedValue>> | undefined;
  readonly #memoryLimit: number;
  readonly #blobs: BlobFiles;
  /** Whether the database may hold `b` entries: until it does, writes need not look for a replaced file. */
  #hasBlobs: boolean;
  /** Whether the database's layout is already 2 (else the first large value's batch records it). */
  #blobFormat: boolean;
  #batch: PendingWrite[] = [];
  #writing = false;
  #sweeping: Promise<void> = Promise.resolve();

  private constructor(db: Level<Buffer, Buffer>, directory: string, options: LevelStoreOptions, state: { format: string; hasBlobs: boolean }) {
    this.#db = db;
    this.directory = directory;
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
    const real = await realpath(directory);
    if (openDirectories.has(real) || (await heldByThisProcess(real))) throw lockedError(real);
    openDirectories.add(real);
    const db = new Level<Buffer, Buffer>(real, { keyEncoding: 'buffer', valueEncoding: 'buffer' });
    try {
      await db.open();
    } catch (error) {
      openDirectories.delete(real);
      throw openError(real, error);
    }
    let state: { format: string; hasBlobs: boolean; files: boolean };
    try {
      const stored = await db.get(FORMAT_KEY);
      if (stored === undefined) await db.put(FORMAT_KEY, Buffer.from(FORMAT_PLAIN));
      const format = stored?.toString() ?? FORMAT_PLAIN;
      if (format !== FORMAT_PLAIN && format !== FORMAT_BLOBS) {
        throw new CacheError('CACHE_CORRUPT', `The cache database in ${real} has layout ${format}, which this version of hoard cannot read.`);
      }
      const first = await db.keys({ ...range(BLOB_PREFIX, ''), limit: 1 }).all();
      // Layout 1 may have files too: the first large value's, when a crash came before its record was written.
      const files = format === FORMAT_BLOBS || (await stat(join(real, 'blobs')).then(() => true, () => false));
      state = { format, hasBlobs: first.length > 0, files };
    } catch (error) {
      await db.close();
      openDirectories.delete(real);
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
    const key = itemKey(scope, id);
    const { bytes } = record.value;
    const replaced = this.#blobOf(key);
    if (bytes.byteLength < BLOB_MIN_BYTES) return this.#enqueue({ key, raw: encodeRecord(record), replaced });
    const name = this.#blobs.newName();
    await this.#blobs.write(name, bytes);
    this.#hasBlobs = true;
    // A view that would keep a much larger buffer alive in memory is copied to a buffer of its own.
    const kept = bytes.buffer.byteLength > 2 * bytes.byteLength ? Buffer.from(bytes) : bytes;
    const blob = { name, record: { modified: record.modified, value: { encoding: record.value.encoding, bytes: kept } }, bytes: kept.buffer.byteLength };
    // A failed batch may still have reached LevelDB's log, and so name the file after a restart: the file stays,
    // and the next open's sweep removes it if no record names it.
    await this.#enqueue({ key, raw: encodeBlobRecord(record, name), blob, replaced });
  }

  delete(scope: Scope, id: string): Promise<void> {
    const key = itemKey(scope, id);
    return this.#enqueue({ key, raw: undefined, replaced: this.#blobOf(key) });
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
      throw storageError('Cannot read from the cache database', error);
    }
  }

  /** Queues a put or a delete for the batch of this turn; resolves once the batch is written. */
  #enqueue(write: Omit<PendingWrite, 'resolve' | 'reject'>): Promise<void> {
    return new Promise((resolve, reject) => {
      if (this.#batch.push({ ...write, resolve, reject }) === 1 && !this.#writing) process.nextTick(() => this.#flush());
    });
  }

  /**
   * Writes the queued operations as one batch. While a batch is being written, new operations wait and go
   * together in the next one: a LevelDB write costs tens of microseconds however small, so under load the
   * batches grow instead of the queue.
   */
  #flush(): void {
    const writes = this.#batch;
    if (writes.length === 0) return;
    this.#batch = [];
    this.#writing = true;
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
    this.#db.batch(operations, this.#writeOptions).then(
      () => {
        if (formatChanged) this.#blobFormat = true;
        // The layer in memory changes only once the disk has: a failed write leaves the old record readable.
        for (const { key, raw, blob, replaced, resolve } of writes) {
          if (blob) this.#memory?.set(key, blob.record, blob.bytes + key.length + ENTRY_OVERHEAD_BYTES);
          else if (raw) this.#memory?.set(key, decodeRecord(raw), raw.length + key.length + ENTRY_OVERHEAD_BYTES);
          else this.#memory?.delete(key);
          if (replaced !== undefined) this.#blobs.remove(replaced);
          resolve();
        }
        this.#writing = false;
        this.#flush();
      },
      (error: unknown) => {
        const failure = storageError('Cannot write to the cache database', error);
        for (const { key, reject } of writes) {
          this.#memory?.delete(key);
          reject(failure);
        }
        this.#writing = false;
        this.#flush();
      },
    );
  }

  async clear(scope: Scope): Promise<void> {
    this.#memory?.deleteWhere((key) => key.startsWith(scope.prefix));
    try {
      if (this.#hasBlobs) await this.#clearBlobs(scope);
      await this.#db.clear(range(ITEM_PREFIX, scope.prefix));
    } catch (error) {
      throw storageError('Cannot clear the cache database', error);
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
      await this.#db.batch(operations, this.#writeOptions);
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
    // A sweep reads the index and lists the files once: closing waits for it rather than cutting it short.
    await this.#sweeping;
    await this.#blobs.removed();
    try {
      await this.#db.close();
    } finally {
      openDirectories.delete(this.directory);
    }
  }
}
