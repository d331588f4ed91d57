import type { CacheItem, ExpiryOptions, GetHandle, GetSetHandle, MissedGetSetHandle } from './cache.js';
import { type CacheBackend, MISSED_GETSET, nowSeconds } from './cache-backend.js';
import { CacheError, isCacheError } from './errors.js';
import { type Lease, type LockOwner, type LockSnapshotEntry, LockTable, type LockTableStats, type SignalSource } from './lock-table.js';
import { itemKey, type Scope } from './scope-path.js';
import type { Store, StoredRecord, StoreListing } from './store.js';

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

function closedError(): CacheError {
  return new CacheError('CACHE_CLOSED', 'The cache is closed.');
}

/** A {@link CacheBackend} in this process: one lock table in front of one store. */
export class LocalBackend<T, V> implements CacheBackend<T> {
  readonly #locks = new LockTable();
  readonly #store: Store<V>;
  readonly #adapter: ValueAdapter<T, V>;
  #closed = false;
  #closing?: Promise<void>;
  #running = 0;
  #drained?: () => void;

  constructor(store: Store<V>, adapter: ValueAdapter<T, V>) {
    this.#store = store;
    this.#adapter = adapter;
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
    return { lease, record: this.#readRecord(lease, scope, id) };
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
    const item = this.#readHeld(lease, scope, id);
    const release = async (): Promise<void> => lease.release();
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
    const item = this.#readHeld(lease, scope, id, { corruptIsMiss: true });
    // Writes through the handle run one after another, and release waits for them; once release has been
    // called, the setter refuses, even while release still waits.
    let writes: Promise<void> = Promise.resolve();
    let writing = 0;
    let released = false;
    const set = (value: T, expiry?: ExpiryOptions): Promise<void> => {
      void expiry;
      if (released || !lease.held) {
        return Promise.reject(new CacheError('CACHE_LOCK_NOT_HELD', 'This getset handle was released; its setter no longer writes.'));
      }
      writing++;
      const write = writes.then(() => this.#write(scope, id, value, nowSeconds())).finally(() => writing--);
      writes = write.catch(() => {});
      return write;
    };
    // With no write running, the lock is free before release returns, so a request behind it sees it free at once.
    const release = async (): Promise<void> => {
      if (released) return;
      released = true;
      if (writing > 0) await writes;
      lease.release();
    };
    return { item, stale: null, set, release, [Symbol.asyncDispose]: release };
  }

  /** `signal` and `owner` are for the daemon, not the public API: the signal drops the call while it waits for the lock. */
  async set(scope: Scope, id: string, value: T, options: LockOptions & ExpiryOptions & { modified: number }): Promise<void> {
    this.#checkOpen();
    const stored = this.#adapter.encode(value);
    const { modified } = options;
    const lease = await this.#lock(itemKey(scope, id), 'exclusive', options);
    try {
      await this.#io(() => this.#store.write(scope, id, { modified, value: stored }));
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

  list(scope: Scope, options: { cursor?: string; limit: number }): Promise<StoreListing> {
    this.#checkOpen();
    return this.#store.list(scope, options);
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

  /** Reads synchronously under the held lease, releasing it if the read fails. */
  #readHeld(
    lease: Lease,
    scope: Scope,
    id: string,
    options: { corruptIsMiss?: boolean } = {},
  ): CacheItem<T> | null {
    const record = this.#readRecord(lease, scope, id, options);
    if (!record) return null;
    const { modified, value } = record;
    const decode = this.#adapter.decode.bind(this.#adapter);
    return { modified, value: async () => decode(value) };
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

  async #write(scope: Scope, id: string, value: T, modified: number): Promise<void> {
    const stored = this.#adapter.encode(value);
    await this.#io(() => this.#store.write(scope, id, { modified, value: stored }));
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
