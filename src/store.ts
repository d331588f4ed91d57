import type { Scope } from './scope-path.js';

/** A value as bytes with the name of the encoding it was written with: how stores and the wire carry values. */
export interface EncodedValue {
  readonly encoding: string;
  readonly bytes: Uint8Array;
}

/** A file that holds one stored value: its name in the store's directory of files, and its length. */
export interface StoredFile {
  readonly name: string;
  readonly lengthBytes: number;
}

/** What a store keeps for one item: the time it was modified and the value in the store's form. */
export interface StoredRecord<V> {
  readonly modified: number;
  readonly value: V;
  /** For a value kept in a file of its own, that file, which never changes while its name is in use. */
  readonly file?: StoredFile | undefined;
  /** When the item expires (reads as a miss), in milliseconds since the epoch; absent: never. */
  readonly expiresAtMs?: number;
  /** Until when an expired item is kept to be handed out as stale, in milliseconds since the epoch; absent: `expiresAtMs`. */
  readonly staleUntilMs?: number;
}

/** What a listing gives for one item: the fields of {@link ListedItem}, in the store's units. */
export interface StoreListedItem {
  readonly id: string;
  readonly sizeBytes: number;
  readonly modified: number;
  readonly expiresAtMs?: number;
  readonly accessedAtMs?: number;
}

/** One page of a store's listing of a scope; `cursor` is opaque to callers. */
export interface StoreListing {
  readonly items: StoreListedItem[];
  readonly scopes: string[];
  readonly cursor: string | null;
}

/**
 * A record read without its value's bytes (see {@link Store.readReference}): the value is in `file`, in `encoding`.
 */
export interface ReferenceRecord {
  readonly modified: number;
  readonly encoding: string;
  readonly file: StoredFile;
  readonly expiresAtMs?: number;
  readonly staleUntilMs?: number;
}

/** The bytes and items counted for a scope. */
export interface ScopeUsage {
  bytes: number;
  items: number;
}

/** What a store with a size limit holds, counted exactly. */
export interface StoreUsage extends ScopeUsage {
  /** The size limit, in bytes; `null` when there is none. */
  readonly limitBytes: number | null;
  /** The figures of each top-level scope, by name; items directly in the root scope are under `''`. */
  readonly scopes: ReadonlyMap<string, ScopeUsage>;
  /**
   * Bytes of replaced or removed values whose files wait for the last handle on them to be released: not in `bytes`,
   * but in {@link Store.totals}, so that eviction makes room for them.
   */
  readonly pinnedBytes?: number;
  /**
   * Bytes of open reservations' files (values being written, not committed yet): not in `bytes`, but in
   * {@link Store.totals}, so that eviction makes room for them.
   */
  readonly reservedBytes?: number;
}

/** What `verify` found (and, with `fix`, mended): the figures kept against those recounted from the data. */
export interface VerifyReport {
  readonly kept: ScopeUsage;
  readonly counted: ScopeUsage;
  /** Top-level scopes whose kept figures differ from the recount. */
  readonly driftedScopes: readonly string[];
  /** Files in the directory of large values that no item names. */
  readonly orphanFiles: number;
  readonly orphanBytes: number;
  /** Index entries (recency, expiry, size) with no item, or items missing theirs. */
  readonly strayEntries: number;
  /** Whether the drift, orphans and strays found were mended. */
  readonly fixed: boolean;
}

/**
 * Where a local cache keeps its items, with no locking of its own: callers hold the item's lock
 * (or, for `clear`, the scope's) around every call. `V` is the stored form of a value: the value
 * itself in memory, encoded bytes on disk.
 */
export interface Store<V> {
  /**
   * Reads synchronously: LevelDB answers from its caches in microseconds, and a hop through libuv's thread
   * pool costs several times the read itself.
   */
  read(scope: Scope, id: string): StoredRecord<V> | undefined;
  /**
   * Like `read`, but a value kept in a file is not read: its record comes as a {@link ReferenceRecord} (a record
   * already in memory comes whole, with its `file`). For a store that keeps values in files.
   */
  readReference?(scope: Scope, id: string): StoredRecord<V> | ReferenceRecord | undefined;
  /**
   * `read` (or, `byReference`, `readReference`) of the item whose storage key (`itemKey(scope, id)`) the caller
   * already has, as a lock's key: the daemon's path for most reads, which spares making the key twice.
   */
  readKey?(key: string, byReference: boolean): StoredRecord<V> | ReferenceRecord | undefined;
  /**
   * Checks that the value file of a {@link ReferenceRecord} is there whole, without reading it.
   * @throws CacheError `CACHE_CORRUPT` when it is not.
   */
  checkFile?(file: StoredFile): void;
  /**
   * Keeps `file` from being removed until the returned function is called (once is enough; more calls do nothing):
   * a removal asked for meanwhile waits for the last such call. Nothing of it outlives the store's open.
   */
  pin?(file: StoredFile): () => void;
  /** The absolute path of the file named `name` (a {@link StoredFile.name}). */
  filePath?(name: string): string;
  write(scope: Scope, id: string, record: StoredRecord<V>): Promise<void>;
  /**
   * Creates an empty private file for a value that any process of this user may write, then {@link Store.writeFile}
   * commits by its number. For a store that keeps values in files.
   */
  reserve?(): Promise<{ reservation: number; path: string }>;
  /**
   * Stores reservation `reservation`'s file, which holds the encoded value in `record.value.encoding`, as `write` does.
   * @throws CacheError `CACHE_FILE_REFUSED` for a file that is not the reservation's own regular file, or a number it
   * did not give.
   */
  writeFile?(scope: Scope, id: string, record: StoredRecord<{ readonly encoding: string }>, reservation: number): Promise<void>;
  /** Removes an uncommitted reservation's file; an unknown number is left alone. */
  discard?(reservation: number): Promise<void>;
  /** Writes `bytes` into reservation `reservation`'s file at `offsetBytes`, counted toward the size limit at once. */
  append?(reservation: number, offsetBytes: number, bytes: Uint8Array): Promise<void>;
  /** Reads the size of reservations' files that other processes write, so that {@link Store.totals} counts them. */
  measureReserved?(): Promise<void>;
  delete(scope: Scope, id: string): Promise<void>;
  /** Deletes the items of `scope` named by `ids` in one write, for a store that can (else `delete` each). */
  deleteMany?(scope: Scope, ids: readonly string[]): Promise<void>;
  /** Removes the items of `scope` and of every scope nested in it. */
  clear(scope: Scope): Promise<void>;
  /**
   * One page of `scope`'s items (expired ones included: the caller filters) and nested scope names, in key order,
   * after `cursor`; bounded memory whatever the scope's size.
   */
  list(scope: Scope, options: { cursor?: string; limit: number }): Promise<StoreListing>;
  /** For a store that counts what it holds (with or without a limit): the figures now, without I/O. */
  usage?(): StoreUsage;
  /** The total of {@link Store.usage} in constant time, whatever the number of scopes: what every write looks at. */
  totals?(): { bytes: number; limitBytes: number | null };
  /** The figures of any scope, counted from the data (the scope's subtree is read once). */
  scopeUsage?(scope: Scope): Promise<ScopeUsage>;
  /**
   * Up to `limit` item keys (`scope-path.ts`'s `itemKey`), least recently used first, after `cursor` (what the
   * previous call returned as `next`); `next` is `null` once every item was given.
   */
  leastRecent?(options: { cursor?: string; limit: number }): Promise<{ keys: string[]; next: string | null }>;
  /** Up to `limit` keys of items whose {@link StoredRecord.staleUntilMs} (or `expiresAtMs`) is at or before `nowMs`. */
  expired?(nowMs: number, limit: number): Promise<string[]>;
  /**
   * The counted bytes of the item with key `key` (`scope-path.ts`'s `itemKey`), read synchronously; `undefined` when
   * there is no such item. What eviction and expiry add to their byte counters, and what a dry run of `gc` projects.
   */
  sizeOf?(key: string): number | undefined;
  /** Recounts from the data and compares with the figures kept; with `fix`, mends what differs. */
  verify?(options: { fix: boolean }): Promise<VerifyReport>;
  /**
   * While the store cannot serve reads for a moment (it is reopening its files after a failed write), a promise
   * that settles once it can; else `undefined`. A store that never pauses leaves it out.
   */
  readsPaused?(): Promise<void> | undefined;
  close(): Promise<void>;
}

/** An item as the daemon stores and sends it: its `modified` and its value's bytes with their encoding. */
export type EncodedRecord = StoredRecord<EncodedValue>;
