import { mkdir, readFile, realpath, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { Level } from 'level';
import { CacheError } from './errors.js';
import type { Scope } from './scope-path.js';
import { itemKey } from './scope-path.js';
import type { Store, StoredRecord } from './store.js';
import { LruMap } from './lru-map.js';

/** A value as bytes with the name of the encoding it was written with. */
export interface EncodedValue {
  readonly encoding: string;
  readonly bytes: Uint8Array;
}

/**
 * The LevelDB layout. Item keys are `i` + the UTF-8 of `scope-path.ts`'s key; `m` + name holds metadata
 * (`mformat`: the layout version). An item's stored value is one record:
 * byte 0 the record version (1), bytes 1-8 `modified` as a little-endian float64, byte 9 the length n of
 * the encoding name, then n bytes of the name in ASCII, then the value's bytes.
 */
const ITEM_PREFIX = 'i';
const FORMAT_KEY = Buffer.from('mformat');
const FORMAT = '1';
const RECORD_VERSION = 1;
const HEADER_BYTES = 10;

function levelKey(key: string): Buffer {
  return Buffer.from(ITEM_PREFIX + key, 'utf8');
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

/** One write of a batch: a put when `record` is set, else a delete. */
interface PendingWrite {
  key: string;
  raw: Buffer | undefined;
  resolve(): void;
  reject(error: unknown): void;
}

export function encodeRecord(record: StoredRecord<EncodedValue>): Buffer {
  const { encoding, bytes } = record.value;
  // Not from the shared pool: a record kept in memory must not keep a pool slab of other records alive.
  const out = Buffer.allocUnsafeSlow(HEADER_BYTES + encoding.length + bytes.byteLength);
  out[0] = RECORD_VERSION;
  out.writeDoubleLE(record.modified, 1);
  out[9] = encoding.length;
  out.write(encoding, HEADER_BYTES, 'latin1');
  out.set(bytes, HEADER_BYTES + encoding.length);
  return out;
}

export function decodeRecord(raw: Buffer): StoredRecord<EncodedValue> {
  if (raw.length < HEADER_BYTES || raw[0] !== RECORD_VERSION || raw.length < HEADER_BYTES + raw[9]!) {
    throw new CacheError('CACHE_CORRUPT', 'A stored record is damaged or was written by a newer version of hoard.');
  }
  const nameEnd = HEADER_BYTES + raw[9]!;
  return {
    modified: raw.readDoubleLE(1),
    value: { encoding: raw.toString('latin1', HEADER_BYTES, nameEnd), bytes: raw.subarray(nameEnd) },
  };
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
  } catch (error) {
    throw storageError(`Cannot repair the cache database in ${real}`, error);
  }
}

function storageError(what: string, cause: unknown): CacheError {
  const detail = cause instanceof Error ? cause.message : String(cause);
  return new CacheError('CACHE_STORAGE', `${what}: ${detail}`, { cause });
}

/**
 * A {@link Store} of encoded values in a LevelDB directory that it holds exclusively while open. Recently used
 * records are also kept in memory, within a byte budget; the writes of one turn go to LevelDB as one batch.
 */
export class LevelStore implements Store<EncodedValue> {
  readonly #db: Level<Buffer, Buffer>;
  readonly directory: string;
  readonly #writeOptions: { sync: boolean };
  readonly #memory: LruMap<string, StoredRecord<EncodedValue>> | undefined;
  readonly #memoryLimit: number;
  #batch: PendingWrite[] = [];
  #writing = false;

  private constructor(db: Level<Buffer, Buffer>, directory: string, options: LevelStoreOptions) {
    this.#db = db;
    this.directory = directory;
    this.#writeOptions = { sync: options.sync ?? false };
    this.#memoryLimit = options.memoryCacheBytes ?? MEMORY_CACHE_BYTES;
    this.#memory = this.#memoryLimit > 0 ? new LruMap({ maxBytes: this.#memoryLimit }) : undefined;
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
    try {
      const format = await db.get(FORMAT_KEY);
      if (format === undefined) await db.put(FORMAT_KEY, Buffer.from(FORMAT));
      else if (format.toString() !== FORMAT) {
        throw new CacheError(
          'CACHE_CORRUPT',
          `The cache database in ${real} has layout ${format.toString()}, which this version of hoard cannot read.`,
        );
      }
    } catch (error) {
      await db.close();
      openDirectories.delete(real);
      throw error;
    }
    return new LevelStore(db, real, options);
  }

  /** The bytes the in-memory layer keeps, and its budget. */
  memoryCache(): { bytes: number; limitBytes: number } {
    return { bytes: this.#memory?.bytes ?? 0, limitBytes: this.#memoryLimit };
  }

  read(scope: Scope, id: string): StoredRecord<EncodedValue> | undefined {
    const key = itemKey(scope, id);
    const kept = this.#memory?.get(key);
    if (kept) return kept;
    let raw: Buffer | undefined;
    try {
      raw = this.#db.getSync(levelKey(key));
    } catch (error) {
      throw storageError('Cannot read from the cache database', error);
    }
    if (raw === undefined) return undefined;
    const record = decodeRecord(raw);
    this.#memory?.set(key, record, raw.length + key.length + ENTRY_OVERHEAD_BYTES);
    return record;
  }

  write(scope: Scope, id: string, record: StoredRecord<EncodedValue>): Promise<void> {
    return this.#enqueue(itemKey(scope, id), encodeRecord(record));
  }

  delete(scope: Scope, id: string): Promise<void> {
    return this.#enqueue(itemKey(scope, id), undefined);
  }

  /** Queues a put (with `raw`) or a delete for the batch of this turn; resolves once the batch is written. */
  #enqueue(key: string, raw: Buffer | undefined): Promise<void> {
    return new Promise((resolve, reject) => {
      if (this.#batch.push({ key, raw, resolve, reject }) === 1 && !this.#writing) process.nextTick(() => this.#flush());
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
    const operations = writes.map(({ key, raw }) =>
      raw ? { type: 'put' as const, key: levelKey(key), value: raw } : { type: 'del' as const, key: levelKey(key) },
    );
    this.#db.batch(operations, this.#writeOptions).then(
      () => {
        // The layer in memory changes only once the disk has: a failed write leaves the old record readable.
        for (const { key, raw, resolve } of writes) {
          if (raw) this.#memory?.set(key, decodeRecord(raw), raw.length + key.length + ENTRY_OVERHEAD_BYTES);
          else this.#memory?.delete(key);
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
    const start = Buffer.from(ITEM_PREFIX + scope.prefix, 'utf8');
    // No UTF-8 byte is 0xFF, so this bound follows every key that starts with `start`.
    const end = Buffer.concat([start, Buffer.from([0xff])]);
    this.#memory?.deleteWhere((key) => key.startsWith(scope.prefix));
    try {
      await this.#db.clear({ gte: start, lt: end });
    } catch (error) {
      throw storageError('Cannot clear the cache database', error);
    }
  }

  async close(): Promise<void> {
    try {
      await this.#db.close();
    } finally {
      openDirectories.delete(this.directory);
    }
  }
}
