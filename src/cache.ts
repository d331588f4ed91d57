/** One cached value and the time it was last modified. */
export interface CacheItem<T> {
  /** Seconds since the Unix epoch, fractions kept exactly. */
  readonly modified: number;
  /** Resolves to the value; decoding happens here, so a caller that only needs `modified` pays nothing for it. */
  value(): Promise<T>;
  /** When the item expires (reads as a miss), in seconds since the Unix epoch; `null` when it never does. */
  readonly expires?: number | null;
  /**
   * A path to a file of the value's encoded bytes (the codec's; a memory cache's byte arrays as they are, other values
   * as JSON), valid until the handle is released, then rejecting with `CACHE_LOCK_NOT_HELD`. Read-only: the file may be
   * the cache's own or shared with other readers; never write, truncate, rename or remove it.
   */
  path(): Promise<string>;
}

/** A held lock that ends with {@link LockHandle.release} or at the end of an `await using` block. */
export interface LockHandle extends AsyncDisposable {
  /** Releases the lock; calling it again does nothing. */
  release(): Promise<void>;
}

/** The result of {@link Cache.get}: the item (or `null`, also when it has expired) and a shared lock on it until released. */
export interface GetHandle<T> extends LockHandle {
  readonly item: CacheItem<T> | null;
}

/** How long a value is fresh, given when it is written. */
export interface ExpiryOptions {
  /** After this many milliseconds the item reads as a miss; absent: it never expires. */
  ttlMs?: number;
  /**
   * How long after expiring the item is kept for {@link GetSetHandle.stale}, in milliseconds; default 0. Only with
   * `ttlMs`.
   */
  staleMs?: number;
}

/** The result of {@link Cache.getset}: the item (or `null`) and the exclusive lock on it until released. */
export interface GetSetHandle<T> extends LockHandle {
  readonly item: CacheItem<T> | null;
  /**
   * The expired item, while it is kept (its `staleMs`), when `item` is `null` because it expired: a caller whose
   * recomputation fails can fall back to it. `null` otherwise.
   */
  readonly stale: CacheItem<T> | null;
  /**
   * Writes the value within the held lock, with `modified` set to now; may be called more than once.
   * @throws CacheError `CACHE_LOCK_NOT_HELD` after the handle was released.
   */
  readonly set: (value: T, options?: ExpiryOptions) => Promise<void>;
  /**
   * Writes the value that the file at `path` holds (encoded as this cache's codec encodes it), within the held lock,
   * with `modified` set to now; `path` must be one this cache's {@link Cache.reserveFile} gave, and the file is the
   * cache's once the write resolves (close it first: a writer that keeps writing afterwards corrupts the value).
   * @throws CacheError `CACHE_LOCK_NOT_HELD` after the handle was released, `CACHE_FILE_REFUSED` for a file that is
   * not the reservation's own regular file (the reservation stays, to be written again or discarded).
   * @throws TypeError (as a rejection) for a path this cache did not reserve, or already committed or discarded.
   */
  readonly setFile: (path: string, options?: ExpiryOptions) => Promise<void>;
}

/** The result of `getset(id, { wait: false })` when the lock was taken: nothing is held. */
export interface MissedGetSetHandle extends LockHandle {
  readonly item: null;
  readonly stale: null;
  readonly set: null;
  readonly setFile: null;
}

/**
 * An empty private file (0600) reserved for a value that any process of this user may write; committed by
 * {@link Cache.setFile} or {@link GetSetHandle.setFile}. Disposing it removes the file unless it was committed.
 */
export interface ReservedFile extends AsyncDisposable {
  readonly path: string;
}

export interface GetOptions {
  /**
   * Aborts waiting for the lock: the call rejects with the signal's reason and leaves nothing queued. A signal
   * already aborted rejects the call at once, even when the lock is free or `wait` is `false`.
   */
  signal?: AbortSignal;
}

export interface GetNowOptions extends GetOptions {
  /** With `false`, resolves at once to `null` when the shared lock cannot be taken now (a writer holds it or waits). */
  wait?: boolean;
}

export interface GetSetOptions extends GetOptions {
  /** With `false`, resolves at once with a {@link MissedGetSetHandle} when the lock cannot be taken now. Default `true`. */
  wait?: boolean;
}

export interface SetOptions extends ExpiryOptions {
  /** Seconds since the Unix epoch; defaults to now. Expiry counts from the write, not from `modified`. */
  modified?: number;
}

export interface ListOptions {
  /** Where the previous page ended (its `cursor`); absent: from the start. */
  cursor?: string;
  /** The most entries (items and scopes together) in one page; default 1,000, at most 10,000. */
  limit?: number;
}

/** One item as a listing shows it. */
export interface ListedItem {
  readonly id: string;
  /** The bytes the item takes as stored, as the size limit counts them; for a value kept in memory, its encoded size or 0. */
  readonly sizeBytes: number;
  /** As {@link CacheItem.modified}. */
  readonly modified: number;
  /** As {@link CacheItem.expires}. */
  readonly expires: number | null;
  /** When it was last read or written, in seconds since the epoch, to the store's recency granularity; `null` if unknown. */
  readonly accessed: number | null;
}

/**
 * One page of a listing, in key order. A scope listed page by page while others write lists no entry twice, and
 * lists every entry present for the whole listing.
 */
export interface ListPage {
  readonly items: readonly ListedItem[];
  /** The names of the scopes nested directly in this one that hold items. */
  readonly scopes: readonly string[];
  /** Pass it as {@link ListOptions.cursor} for the next page; `null` on the last page. */
  readonly cursor: string | null;
}

/**
 * A cache of values of type `T`, addressed by string ids within nested scopes.
 *
 * Every item has a reader/writer lock: `get` handles share it; `getset`, `set` and `delete` take it
 * exclusively; `clear` takes the whole scope. Waiters are served first come, first served. Locks are
 * not re-entrant: a holder that waits for a conflicting lock on the same item waits forever.
 */
export interface Cache<T> {
  /** Returns the nested cache named `name`: the same object every time for the same name. */
  withScope(name: string): Cache<T>;
  /** Reads the item, holding a shared lock on it until the handle is released. */
  get(id: string, options?: GetOptions & { wait?: true }): Promise<GetHandle<T>>;
  get(id: string, options: GetNowOptions): Promise<GetHandle<T> | null>;
  /**
   * Reads the item and holds its exclusive lock until the handle is released, so that concurrent
   * callers compute a missing value once.
   */
  getset(id: string, options?: GetSetOptions & { wait?: true }): Promise<GetSetHandle<T>>;
  getset(id: string, options: GetSetOptions): Promise<GetSetHandle<T> | MissedGetSetHandle>;
  /** Adds or replaces the item under its exclusive lock. */
  set(id: string, value: T, options?: SetOptions): Promise<void>;
  /**
   * Reserves an empty private file for a value to be written by any process of this user (a worker), then committed
   * by `setFile` without the value passing through this process; it is removed at dispose unless committed, and at the
   * latest when the cache closes. The file holds the value encoded as the codec encodes it (with `'binary'`, the raw
   * bytes).
   */
  reserveFile(): Promise<ReservedFile>;
  /**
   * Adds or replaces the item, under its exclusive lock, with the value the file at `path` holds; `path` must be one
   * this cache's `reserveFile` gave (any scope of the same root), and the file is the cache's once this resolves.
   * @throws CacheError `CACHE_FILE_REFUSED` for a file that is not the reservation's own regular file (the
   * reservation stays), `CACHE_VALUE_TOO_LARGE` over 4 GiB − 1 bytes, `CACHE_OVER_SIZE_LIMIT`.
   * @throws TypeError (as a rejection) for a path this cache did not reserve, or already committed or discarded.
   */
  setFile(id: string, path: string, options?: SetOptions): Promise<void>;
  /** Removes the item under its exclusive lock; removing a missing item is not an error. */
  delete(id: string): Promise<void>;
  /** Removes every item of this scope and of all scopes nested in it, once the locks held there are released. */
  clear(): Promise<void>;
  /** One page of the ids of this scope's items and the names of its nested scopes; takes no lock. */
  list(options?: ListOptions): Promise<ListPage>;
}

/** A cache that owns resources: the root object a backend returns. */
export interface ClosableCache<T> extends Cache<T>, AsyncDisposable {
  /**
   * Rejects pending lock waits with `CACHE_CLOSED`, waits for running writes, and frees the storage.
   * Later calls on this cache and its scopes reject with `CACHE_CLOSED`; calling it again does nothing.
   */
  close(): Promise<void>;
}
