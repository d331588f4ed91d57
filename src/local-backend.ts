import type { CacheItem, ExpiryOptions, GetHandle, GetSetHandle, MissedGetSetHandle } from './cache.js';
import { type CacheBackend, MISSED_GETSET, nowSeconds } from './cache-backend.js';
import { checkExpiry } from './cache-view.js';
import { CacheError, isCacheError } from './errors.js';
import { type GcReport, Housekeeper, type RemovalCounters } from './housekeeper.js';
import { type Lease, type LockOwner, type LockSnapshotEntry, LockTable, type LockTableStats, type SignalSource } from './lock-table.js';
import { itemKey, type Scope } from './scope-path.js';
import type { ScopeUsage, Store, StoredRecord, StoreListing, StoreUsage, VerifyReport } from './store.js';

/** Converts between a cache's values and a store's stored form. */
export interface ValueAdapter<T, V> {
  /** Runs before any lock is taken, so a value it refuses leaves the stored item untouched. */
  encode(value: T): V;
  decode(stored: V): T;
}

/** How a call waits for its lock: a signal that ends the wait, and who asks (for `hoard locks`). */
export interface LockOptions {
  signal?: SignalSource;
  owner?: LockOwner | undefined;
}

export interface LocalBackendOptions {
  /** The clock that expiry reads, in milliseconds since the epoch; default `Date.now`. For tests. */
  now?: () => number;
  /** How often expired items are swept from a store that indexes them, in milliseconds; default 10 s. For tests. */
  sweepIntervalMs?: number;
  /** Where a failed background eviction or sweep is told, at most one line a minute; default nowhere. */
  log?: (line: string) => void;
}

function closedError(): CacheError {
  return new CacheError('CACHE_CLOSED', 'The cache is closed.');
}

/** Whether a record is fresh, expired but kept as stale, or past its stale time (to be removed). */
type Freshness = 'fresh' | 'stale' | 'gone';

function freshness(record: StoredRecord<unknown>, nowMs: number): Freshness {
  const { expiresAtMs } = record;
  if (expiresAtMs === undefined || nowMs < expiresAtMs) return 'fresh';
  return nowMs < (record.staleUntilMs ?? expiresAtMs) ? 'stale' : 'gone';
}

/** The expiry fields of a record written at `nowMs`. */
function expiryFields(nowMs: number, expiry: ExpiryOptions): { expiresAtMs?: number; staleUntilMs?: number } {
  if (expiry.ttlMs === undefined) return {};
  const expiresAtMs = nowMs + expiry.ttlMs;
  return { expiresAtMs, staleUntilMs: expiresAtMs + (expiry.staleMs ?? 0) };
}

/**
 * A {@link CacheBackend} in this process: one lock table in front of one store, and a {@link Housekeeper} that
 * removes expired items and, for a store with a size limit, evicts the least recently used ones.
 *
 * An item past its `expiresAtMs` reads as a miss; `getset` also hands it out as `stale` until its `staleUntilMs`.
 * A read that finds it past that queues it for removal once the reader lets go of it.
 */
export class LocalBackend<T, V> implements CacheBackend<T> {
  readonly #locks = new LockTable();
  readonly #store: Store<V>;
  readonly #adapter: ValueAdapter<T, V>;
  readonly #now: () => number;
  readonly #housekeeper: Housekeeper;
  #closed = false;
  #closing?: Promise<void>;
  #running = 0;
  #drained?: () => void;

  constructor(store: Store<V>, adapter: ValueAdapter<T, V>, options: LocalBackendOptions = {}) {
    this.#store = store;
    this.#adapter = adapter;
    this.#now = options.now ?? Date.now;
    this.#housekeeper = new Housekeeper(store, this.#locks, this.#now, { sweepIntervalMs: options.sweepIntervalMs, log: options.log });
  }

  /**
   * Reads the stored record if the item's shared lock can be granted at once, holding it until the lease is
   * released; `undefined` (with nothing queued) when the lock is taken. The daemon's path for most reads: no promise.
   * @throws CacheError `CACHE_CLOSED`, or the store's read errors (with the lock released).
   */
  readNow(scope: Scope, id: string, owner?: LockOwner): { lease: Lease; record: StoredRecord<V> | undefined } | undefined {
    this.#checkOpen();
    if (this.#store.readsPaused?.()) return undefined;
    const lease = this.#locks.tryAcquire(itemKey(scope, id), 'shared', { owner });
    if (!lease) return undefined;
    const record = this.#readRecord(lease, scope, id);
    // Most records never expire: the clock is read only for those that do.
    if (record?.expiresAtMs === undefined) return { lease, record };
    const state = freshness(record, this.#now());
    if (state === 'fresh') return { lease, record };
    return { lease: state === 'gone' ? this.#removeOnRelease(lease) : lease, record: undefined };
  }

  async get(scope: Scope, id: string, options: LockOptions & { wait?: boolean }): Promise<GetHandle<T> | null> {
    let lease: Lease;
    if (options.wait === false) {
      this.#checkOpen();
      const taken = this.#locks.tryAcquire(itemKey(scope, id), 'shared', { owner: options.owner });
      if (!taken) return null;
      lease = taken;
    } else {
      const acquired = this.#lock(itemKey(scope, id), 'shared', options);
      lease = acquired instanceof Promise ? await acquired : acquired;
    }
    await this.#readable();
    const record = this.#readRecord(lease, scope, id);
    const state = record && freshness(record, this.#now());
    const held = state === 'gone' ? this.#removeOnRelease(lease) : lease;
    const item = state === 'fresh' ? this.#item(record!) : null;
    const release = async (): Promise<void> => held.release();
    return { item, release, [Symbol.asyncDispose]: release };
  }

  async getset(
    scope: Scope,
    id: string,
    options: LockOptions & { wait: boolean },
  ): Promise<GetSetHandle<T> | MissedGetSetHandle> {
    const key = itemKey(scope, id);
    let lease: Lease;
    if (options.wait) {
      const acquired = this.#lock(key, 'exclusive', options);
      lease = acquired instanceof Promise ? await acquired : acquired;
    } else {
      this.#checkOpen();
      const taken = this.#locks.tryAcquire(key, 'exclusive', { owner: options.owner });
      if (!taken) return MISSED_GETSET;
      lease = taken;
    }
    await this.#readable();
    // A damaged record counts as a miss here, so that the caller computes the value again and replaces it.
    const record = this.#readRecord(lease, scope, id, { corruptIsMiss: true });
    const state = record && freshness(record, this.#now());
    const item = state === 'fresh' ? this.#item(record!) : null;
    const stale = state === 'stale' ? this.#item(record!) : null;
    // Writes through the handle run one after another, and release waits for them; once release has been
    // called, the setter refuses, even while release still waits.
    let writes: Promise<void> = Promise.resolve();
    let writing = 0;
    let released = false;
    let written = false;
    // Async, so that every refusal (a bad expiry, a released handle) is a rejection; the write is queued at once.
    const set = async (value: T, options?: ExpiryOptions): Promise<void> => {
      const expiry = checkExpiry(options);
      if (released || !lease.held) throw new CacheError('CACHE_LOCK_NOT_HELD', 'This getset handle was released; its setter no longer writes.');
      writing++;
      written = true;
      const write = writes.then(() => this.#write(scope, id, value, nowSeconds(), expiry)).finally(() => writing--);
      writes = write.catch(() => {});
      return write;
    };
    // With no write running, the lock is free before release returns, so a request behind it sees it free at once.
    const release = async (): Promise<void> => {
      if (released) return;
      released = true;
      if (writing > 0) await writes;
      lease.release();
      // An item past its stale time that the caller did not replace goes now that its lock is free.
      if (state === 'gone' && !written) this.#housekeeper.foundExpired(key);
    };
    return { item, stale, set, release, [Symbol.asyncDispose]: release };
  }

  /** `signal` and `owner` are for the daemon, not the public API: the signal drops the call while it waits for the lock. */
  async set(scope: Scope, id: string, value: T, options: LockOptions & ExpiryOptions & { modified: number }): Promise<void> {
    this.#checkOpen();
    const stored = this.#adapter.encode(value);
    const { modified } = options;
    const key = itemKey(scope, id);
    const lease = await this.#lock(key, 'exclusive', options);
    try {
      await this.#io(() => this.#store.write(scope, id, { modified, value: stored, ...expiryFields(this.#now(), options) }));
      this.#housekeeper.written(key);
    } finally {
      lease.release();
    }
  }

  async delete(scope: Scope, id: string, options: LockOptions = {}): Promise<void> {
    const lease = await this.#lock(itemKey(scope, id), 'exclusive', options);
    try {
      await this.#io(() => this.#store.delete(scope, id));
    } finally {
      lease.release();
    }
  }

  async clear(scope: Scope, options: LockOptions = {}): Promise<void> {
    const lease = await this.#lock(scope.prefix, 'subtree', options);
    try {
      await this.#io(() => this.#store.clear(scope));
    } finally {
      lease.release();
    }
  }

  /**
   * One page of the scope's listing, without its expired items: a page may hold fewer than `limit` entries (even
   * none) and still have a cursor.
   */
  async list(scope: Scope, options: { cursor?: string; limit: number }): Promise<StoreListing> {
    const listing = await this.#io(() => this.#store.list(scope, options));
    const nowMs = this.#now();
    const items = listing.items.filter((item) => item.expiresAtMs === undefined || nowMs < item.expiresAtMs);
    return items.length === listing.items.length ? listing : { ...listing, items };
  }

  /** The store's counted figures now (size, limit, items, by top-level scope); `null` for a store that does not count. */
  usage(): StoreUsage | null {
    this.#checkOpen();
    return this.#store.usage?.() ?? null;
  }

  /** A scope's figures, counted from the data; `null` for a store that does not count. */
  async scopeUsage(scope: Scope): Promise<ScopeUsage | null> {
    const { scopeUsage } = this.#store;
    return scopeUsage ? this.#io(() => scopeUsage.call(this.#store, scope)) : null;
  }

  /**
   * Removes expired items, and above 90% of the size limit the least recently used ones down to it, now (after any
   * pass under way); with `dryRun`, removes nothing and says what it would remove.
   */
  async gc(options: { dryRun: boolean }): Promise<GcReport> {
    return this.#io(() => this.#housekeeper.gc(options));
  }

  /** Recounts the store's figures from its data, and with `fix` mends them; `null` for a store that cannot. */
  async verify(options: { fix: boolean }): Promise<VerifyReport | null> {
    const { verify } = this.#store;
    return verify ? this.#io(() => verify.call(this.#store, options)) : null;
  }

  /** The items evicted and expired since the cache opened, in total and by top-level scope. */
  counters(): RemovalCounters {
    return this.#housekeeper.counters();
  }

  /** How many background eviction or expiry passes failed since the cache opened. */
  housekeepingFailures(): number {
    return this.#housekeeper.failures();
  }

  /** How many locks are held and how many requests wait. */
  lockStats(): LockTableStats {
    return this.#locks.stats();
  }

  /** Every held lock and waiting request, with who asked and since when (for `hoard locks`). */
  lockSnapshot(): LockSnapshotEntry[] {
    return this.#locks.snapshot();
  }

  close(): Promise<void> {
    this.#closing ??= (async () => {
      this.#closed = true;
      this.#locks.rejectWaiters(closedError());
      await this.#housekeeper.close();
      if (this.#running > 0) await new Promise<void>((resolve) => (this.#drained = resolve));
      await this.#store.close();
    })();
    return this.#closing;
  }

  #checkOpen(): void {
    if (this.#closed) throw closedError();
  }

  /** Waits while the store pauses its reads (no promise when it does not). */
  async #readable(): Promise<void> {
    for (let paused = this.#store.readsPaused?.(); paused; paused = this.#store.readsPaused?.()) await paused;
  }

  #lock(key: string, mode: 'shared' | 'exclusive' | 'subtree', options: LockOptions): Lease | Promise<Lease> {
    this.#checkOpen();
    return this.#locks.acquire(key, mode, options);
  }

  #item(record: StoredRecord<V>): CacheItem<T> {
    const { modified, value, expiresAtMs } = record;
    const decode = this.#adapter.decode.bind(this.#adapter);
    return { modified, expires: expiresAtMs === undefined ? null : expiresAtMs / 1000, value: async () => decode(value) };
  }

  /** The lease, made to queue its item for removal (past its stale time) once released. */
  #removeOnRelease(lease: Lease): Lease {
    const housekeeper = this.#housekeeper;
    return {
      key: lease.key,
      mode: lease.mode,
      get held() {
        return lease.held;
      },
      release() {
        if (!lease.held) return;
        lease.release();
        housekeeper.foundExpired(lease.key);
      },
    };
  }

  /** Reads the stored record under the held lease, releasing the lease if the read fails. */
  #readRecord(lease: Lease, scope: Scope, id: string, options: { corruptIsMiss?: boolean } = {}): StoredRecord<V> | undefined {
    try {
      this.#checkOpen();
      return this.#store.read(scope, id);
    } catch (error) {
      if (options.corruptIsMiss && isCacheError(error, 'CACHE_CORRUPT')) return undefined;
      lease.release();
      throw error;
    }
  }

  async #write(scope: Scope, id: string, value: T, modified: number, expiry: ExpiryOptions): Promise<void> {
    const stored = this.#adapter.encode(value);
    await this.#io(() => this.#store.write(scope, id, { modified, value: stored, ...expiryFields(this.#now(), expiry) }));
    this.#housekeeper.written(itemKey(scope, id));
  }

  /** Runs one store call, refusing it once the cache is closed and letting `close` wait for it. */
  async #io<R>(operation: () => Promise<R>): Promise<R> {
    this.#checkOpen();
    this.#running++;
    try {
      return await operation();
    } finally {
      if (--this.#running === 0) this.#drained?.();
    }
  }
}
