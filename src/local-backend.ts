import type { CacheItem, ExpiryOptions, GetHandle, GetSetHandle, MissedGetSetHandle, ReservedFile } from './cache.js';
import { type CacheBackend, MISSED_GETSET, nowSeconds } from './cache-backend.js';
import { checkExpiry } from './cache-view.js';
import { CacheError, isCacheError } from './errors.js';
import { type GcReport, Housekeeper, type RemovalCounters } from './housekeeper.js';
import {
  type CancelWait,
  type Lease,
  type LockOwner,
  type LockSnapshotEntry,
  LockTable,
  type LockTableStats,
  type SignalSource,
  type WaitGate,
} from './lock-table.js';
import { HandleFiles, releaseAll } from './private-files.js';
import { PrivateReservations, ReservedFiles } from './reserved-files.js';
import { PerKindLog } from './per-kind-log.js';
import { childScope, itemKey, ROOT_SCOPE, type Scope, scopeOf } from './scope-path.js';
import type { ScopeSharing, SharedTier, TierLease, TierRead, TierSink, TierStatus } from './shared-tier.js';
import type { ReferenceRecord, ScopeUsage, Store, StoredRecord, StoreListing, StoreUsage, VerifyReport } from './store.js';

/** Converts between a cache's values and a store's stored form. */
export interface ValueAdapter<T, V> {
  /** Runs before any lock is taken, so a value it refuses leaves the stored item untouched. */
  encode(value: T): V;
  decode(stored: V): T;
  /** The bytes `item.path()` writes for a value not kept in a file of the store's: its encoded bytes. */
  bytes?(stored: V): Uint8Array;
  /** The name of the encoding a reserved file's bytes are in, for a store that commits files itself. */
  readonly encoding?: string;
  /** The stored form of a value given as a reserved file's bytes, for a store that keeps no files. */
  fromBytes?(bytes: Uint8Array): V;
}

/** A reservation handed out by {@link LocalBackend.reserveFile}: the store's, or one in the private directory. */
interface Reservation {
  readonly reservation: number;
  readonly private: boolean;
}

/** How a call waits for its lock: a signal that ends the wait, and who asks (for `hoard locks`). */
export interface LockOptions {
  signal?: SignalSource;
  owner?: LockOwner | undefined;
}

/**
 * For the daemon's `get` and `getset`: a value kept in a file is not read, and its item is made from a
 * {@link ReferenceRecord} (see {@link storedRecordOf}) whose `value()` is not to be called.
 */
export interface ReadOptions {
  reference?: boolean;
}

export interface LocalBackendOptions<V = unknown> {
  /** The clock that expiry reads, in milliseconds since the epoch; default `Date.now`. For tests. */
  now?: () => number;
  /** How often expired items are swept from a store that indexes them, in milliseconds; default 10 s. For tests. */
  sweepIntervalMs?: number;
  /**
   * Where a failed background eviction or sweep, or a failed local copy of a shared item, is told, at most one line a
   * minute each; default nowhere.
   */
  log?: (line: string) => void;
  /**
   * The shared second tier behind the store, for the scopes it shares: see {@link LocalBackend}. The backend owns it:
   * {@link LocalBackend.openTier} attaches it and {@link LocalBackend.close} closes it.
   */
  tier?: SharedTier<V>;
}

/** The stored record each item handed out was made from, for the daemon, whose values are the stored form. */
const storedRecords = new WeakMap<object, StoredRecord<unknown> | ReferenceRecord>();

/**
 * The stored record behind an item that a {@link LocalBackend} handed out (with its `file`, for a value kept in one);
 * `undefined` for any other item.
 */
export function storedRecordOf<V>(item: CacheItem<unknown>): StoredRecord<V> | ReferenceRecord | undefined {
  return storedRecords.get(item) as StoredRecord<V> | ReferenceRecord | undefined;
}

/** Who the tier's own work on the local store (dropping stale copies) is, for `hoard locks`. */
const TIER_OWNER: LockOwner = Object.freeze({ name: 'hoard tier' });

function closedError(): CacheError {
  return new CacheError('CACHE_CLOSED', 'The cache is closed.');
}

/** A local copy whose drop waits for its lock: see `LocalBackend.#staleItems`. */
interface StaleItem {
  readonly keepIf: (() => boolean) | undefined;
}

/** A scope being dropped: drops under way, whether one failed (it reads as misses until one succeeds), what is kept. */
interface DroppingScope {
  walks: number;
  failed: boolean;
  keepIf: (scope: Scope, id: string) => boolean;
}

/**
 * Whether a local copy may be served: `serve`; `stale`, known to be (a drop of it is under way): a miss; `unsure`, its
 * scope not known to be in sync: read through the tier, and served only if the tier cannot answer.
 */
type Trust = 'serve' | 'stale' | 'unsure';

/** Whether a record is fresh, expired but kept as stale, or past its stale time (to be removed). */
type Freshness = 'fresh' | 'stale' | 'gone';

function freshness(record: { readonly expiresAtMs?: number | undefined; readonly staleUntilMs?: number | undefined }, nowMs: number): Freshness {
  const { expiresAtMs } = record;
  if (expiresAtMs === undefined || nowMs < expiresAtMs) return 'fresh';
  return nowMs < (record.staleUntilMs ?? expiresAtMs) ? 'stale' : 'gone';
}

/** A copy the tier holds, as the local tier's expiry sees it (never `gone`), and whether it was kept as the local copy. */
interface Found<V> {
  readonly record: StoredRecord<V>;
  readonly state: Freshness;
  readonly kept: boolean;
}

/** The expiry fields of a record written at `nowMs`. */
function expiryFields(nowMs: number, expiry: ExpiryOptions): { expiresAtMs?: number; staleUntilMs?: number } {
  if (expiry.ttlMs === undefined) return {};
  const expiresAtMs = nowMs + expiry.ttlMs;
  return { expiresAtMs, staleUntilMs: expiresAtMs + (expiry.staleMs ?? 0) };
}

/** The bytes of a stored value as the tier's size limit counts them: an encoded value's bytes (the daemon's values). */
function valueBytes(value: unknown): number {
  if (value instanceof Uint8Array) return value.byteLength;
  const bytes = (value as { bytes?: unknown } | null)?.bytes;
  if (bytes instanceof Uint8Array) return bytes.byteLength;
  return typeof value === 'string' ? Buffer.byteLength(value) : 0;
}

/**
 * The abort signal of a wait for a tier lease, from a lock request's signal source: a function or a gate is told
 * that the request waits, as for a lock, and `end` tells the gate that it no longer does.
 * @throws what the gate throws to refuse the wait (`CACHE_TOO_MANY_WAITERS`).
 */
function tierWait(source: SignalSource): { signal: AbortSignal | undefined; end(): void } {
  if (source === undefined || source instanceof AbortSignal) return { signal: source, end() {} };
  const controller = new AbortController();
  const cancel: CancelWait = (reason) => controller.abort(reason);
  let gate: WaitGate | undefined;
  const outer = typeof source === 'function' ? source(cancel) : (gate = source).enter(cancel, 'exclusive');
  const signal = outer ? AbortSignal.any([controller.signal, outer]) : controller.signal;
  return { signal, end: () => gate?.leave() };
}

/**
 * A {@link CacheBackend} in this process: one lock table in front of one store, and a {@link Housekeeper} that
 * removes expired items and, for a store with a size limit, evicts the least recently used ones.
 *
 * An item past its `expiresAtMs` reads as a miss; `getset` also hands it out as `stale` until its `staleUntilMs`.
 * A read that finds it past that queues it for removal once the reader lets go of it.
 *
 * With a shared tier, in the scopes it shares, a local hit is served as without one; a local miss reads the tier and
 * keeps its copy locally (when the tier says it still may, written under the read's lock before the item is handed
 * out); `set`, `delete` and `clear` in a `shared` scope write both tiers (local first, or the tier first when it is
 * strict), and a `getset` miss there holds the tier's lease for the item as well as its local lock, its setter
 * writing the tier first, fenced by the lease. The tier is always asked while the item's local lock is held.
 */
/** A getset handle of a {@link LocalBackend}: it can also commit a store's reservation by number (the daemon's). */
export interface LocalGetSetHandle<T> extends GetSetHandle<T> {
  /**
   * Writes the value that the store's reservation `reservation` holds (see {@link LocalBackend.reserve}), encoded in
   * `encoding`, within the held lock.
   * @throws CacheError `CACHE_LOCK_NOT_HELD` after release, `CACHE_FILE_REFUSED` (nothing written).
   */
  readonly commitFile: (reservation: number, options: ExpiryOptions & { encoding: string }) => Promise<void>;
}

export class LocalBackend<T, V> implements CacheBackend<T> {
  readonly #locks = new LockTable();
  readonly #store: Store<V>;
  readonly #adapter: ValueAdapter<T, V>;
  readonly #now: () => number;
  readonly #housekeeper: Housekeeper;
  readonly #tier: SharedTier<V> | undefined;
  /**
   * Items whose local copy a read is writing now: readers share the item's lock, and the store takes one write of an
   * item at a time, so a second reader of the same miss serves the tier's copy without writing it again.
   */
  readonly #copying = new Set<string>();
  /**
   * Local copies known stale whose drop waits for the item's lock, by item key: read as misses until it ran, unless
   * the drop's `keepIf` keeps them (their own change waits). So a reader queued before the drop, behind a holder,
   * never gets the old copy.
   */
  readonly #staleItems = new Map<string, StaleItem>();
  /** The drops of held items that wait for their lock, by item key: one request each, however often a drop is retried. */
  readonly #heldDrops = new Map<string, Promise<void>>();
  /** Scopes being dropped item by item, by prefix: their local copies read as misses until a drop has walked them. */
  readonly #droppingScopes = new Map<string, DroppingScope>();
  /** Failed local copies of shared items, logged a line a minute at most. */
  readonly #copyFailures: PerKindLog | undefined;
  #closed = false;
  #closing?: Promise<void>;
  #running = 0;
  /** Handles whose items' paths have files of their own, removed at close if not released by then. */
  readonly #handleFiles = new Set<HandleFiles>();
  /** The reservations `reserveFile` handed out, by path. */
  readonly #reserved = new ReservedFiles<Reservation>((entry) => this.#discardEntry(entry));
  /** Reservations of a store that keeps no files, in this process's private directory. */
  readonly #private = new PrivateReservations();
  #drained?: () => void;

  constructor(store: Store<V>, adapter: ValueAdapter<T, V>, options: LocalBackendOptions<V> = {}) {
    this.#store = store;
    this.#adapter = adapter;
    this.#now = options.now ?? Date.now;
    this.#tier = options.tier;
    this.#copyFailures = options.log && new PerKindLog(options.log);
    const tier = options.tier;
    // An item whose change waits to be written through is not evicted: its local record is the change.
    const pinned = tier?.waitsToWrite === undefined ? undefined : (key: string) => tier.waitsToWrite!(key);
    const pinnedEvicted = tier?.evictedBeforeWrite === undefined ? undefined : (key: string) => tier.evictedBeforeWrite!(key);
    this.#housekeeper = new Housekeeper(store, this.#locks, this.#now, { sweepIntervalMs: options.sweepIntervalMs, log: options.log, pinned, pinnedEvicted });
  }

  /**
   * Connects the shared tier to the store, whose stale copies it drops (under their locks, never writing back to the
   * tier); call it once, before serving. Without a tier it does nothing.
   */
  async openTier(): Promise<void> {
    if (!this.#tier) return;
    this.#checkOpen();
    const sink: TierSink<V> = {
      invalidate: (scope, id, options) => this.#invalidate(scope, id, options?.keepIf),
      drop: (scope, options) => (options?.keepIf === undefined ? this.#drop(scope) : this.#dropExcept(scope, options.keepIf, options.synced)),
      localScopes: () => this.#store.usage?.().scopes.keys() ?? [],
      replay: (scope, id, send) => this.#replay(scope, id, send),
      replayQueued: (scope, id, send, options) => this.#replayQueued(scope, id, send, options.signal),
      replayScope: (scope, send, onHeld) => this.#replayScope(scope, send, onHeld),
    };
    await this.#tier.attach(sink);
  }

  /** The shared tier's figures; `null` without a tier. */
  tierStatus(): TierStatus | null {
    return this.#tier?.status() ?? null;
  }

  /**
   * Reads the stored record if the item's shared lock can be granted at once, holding it until the lease is
   * released; `undefined` (with nothing queued) when the lock is taken. The daemon's path for most reads: no promise.
   * @throws CacheError `CACHE_CLOSED`, or the store's read errors (with the lock released).
   */
  readNow(scope: Scope, id: string, owner?: LockOwner): { lease: Lease; record: StoredRecord<V> | undefined } | undefined {
    return this.#readNow(scope, id, owner, false) as { lease: Lease; record: StoredRecord<V> | undefined } | undefined;
  }

  /**
   * {@link LocalBackend.readNow}, where a value kept in a file comes as a {@link ReferenceRecord} (its file not read),
   * for a store that can (else as `readNow`). The file is pinned until the lease is released.
   */
  readNowByReference(scope: Scope, id: string, owner?: LockOwner): { lease: Lease; record: StoredRecord<V> | ReferenceRecord | undefined } | undefined {
    return this.#readNow(scope, id, owner, true);
  }

  #readNow(scope: Scope, id: string, owner: LockOwner | undefined, reference: boolean): { lease: Lease; record: StoredRecord<V> | ReferenceRecord | undefined } | undefined {
    this.#checkOpen();
    if (this.#store.readsPaused?.()) return undefined;
    const lease = this.#locks.tryAcquire(itemKey(scope, id), 'shared', { owner });
    if (!lease) return undefined;
    const record = this.#readRecord(lease, scope, id, { reference });
    // A copy the tier does not vouch for now is read through the tier: `get` does it.
    if (record !== undefined && this.#tier !== undefined && this.#trust(scope, id) !== 'serve') {
      lease.release();
      return undefined;
    }
    // Most records never expire: the clock is read only for those that do.
    if (record?.expiresAtMs === undefined) {
      if (record !== undefined) return { lease: record.file ? this.#pinned(lease, record) : lease, record };
      if (!this.#shares(scope)) return { lease, record };
    } else {
      const state = freshness(record, this.#now());
      if (state === 'fresh') return { lease: record.file ? this.#pinned(lease, record) : lease, record };
      if (!this.#shares(scope)) return { lease: state === 'gone' ? this.#removeOnRelease(lease) : lease, record: undefined };
    }
    // A miss in a scope the tier shares reads through the tier, which takes a promise: `get` does it.
    lease.release();
    return undefined;
  }

  /** A fresh local copy the tier does not vouch for now reads as a miss; one it is only unsure of is kept as the fallback served when the tier cannot answer. */
  #vouched<R extends StoredRecord<V> | ReferenceRecord>(
    scope: Scope,
    id: string,
    read: R | undefined,
  ): { record: R | undefined; state: Freshness | undefined; expiredLocally: boolean; fallback: R | undefined } {
    const state = read && freshness(read, this.#now());
    const expiredLocally = state === 'gone';
    if (state !== 'fresh' || this.#tier === undefined) return { record: read, state, expiredLocally, fallback: undefined };
    const trust = this.#trust(scope, id);
    if (trust === 'serve') return { record: read, state, expiredLocally, fallback: undefined };
    return { record: undefined, state: undefined, expiredLocally, fallback: trust === 'unsure' ? read : undefined };
  }

  async get(scope: Scope, id: string, options: LockOptions & ReadOptions & { wait?: boolean }): Promise<GetHandle<T> | null> {
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
    let { record, state, expiredLocally, fallback } = this.#vouched(scope, id, this.#readRecord(lease, scope, id, { reference: options.reference === true }));
    if (state !== 'fresh' && this.#shares(scope)) {
      // A local copy the tier is unsure of is not replaced (it may be a `shared-read` scope's local write).
      const shared = await this.#readThrough(lease, scope, id, { keep: fallback === undefined });
      if (shared) {
        ({ record, state } = shared);
        if (shared.kept) expiredLocally = false;
      } else if (shared === null && fallback) {
        record = fallback;
        state = 'fresh';
      }
    }
    const removing = expiredLocally ? this.#removeOnRelease(lease) : lease;
    const held = state === 'fresh' && record!.file ? this.#pinned(removing, record!) : removing;
    const files = new HandleFiles(this.#handleFiles, { lost: () => this.#closed });
    const item = state === 'fresh' ? this.#item(record!, files) : null;
    const release = async (): Promise<void> => {
      const removed = files.release();
      held.release();
      await removed;
    };
    return { item, release, [Symbol.asyncDispose]: release };
  }

  async getset(
    scope: Scope,
    id: string,
    options: LockOptions & ReadOptions & { wait: boolean },
  ): Promise<LocalGetSetHandle<T> | MissedGetSetHandle> {
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
    let { record, state, expiredLocally, fallback } = this.#vouched(
      scope,
      id,
      this.#readRecord(lease, scope, id, { corruptIsMiss: true, reference: options.reference === true }),
    );
    // A local hit holds the local lock alone, as without a tier: its setter, if used, writes as a plain set does.
    const sharing = state === 'fresh' ? 'local' : this.#sharing(scope);
    let tierLease: TierLease | undefined;
    if (sharing !== 'local') {
      let found;
      let unavailable: boolean;
      if (sharing === 'shared') {
        const granted = await this.#acquireTier(lease, scope, id, options);
        if (granted === 'busy') return MISSED_GETSET;
        tierLease = granted?.lease;
        found = granted?.found;
        unavailable = granted === undefined;
      } else {
        found = await this.#readThrough(lease, scope, id, { keep: fallback === undefined });
        unavailable = found === null;
      }
      if (found) {
        ({ record, state } = found);
        if (found.kept) expiredLocally = false;
      } else if (unavailable && fallback) {
        record = fallback;
        state = 'fresh';
      }
    }
    const files = new HandleFiles(this.#handleFiles, { lost: () => this.#closed });
    const item = state === 'fresh' ? this.#item(record!, files) : null;
    const stale = state === 'stale' ? this.#item(record!, files) : null;
    // The file of the value handed out stays until release, even when the handle's own set replaces it.
    const unpin = item || stale ? this.#pin(record!) : undefined;
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
      const write = writes.then(() => this.#handleWrite(scope, id, value, expiry, tierLease)).finally(() => writing--);
      writes = write.catch(() => {});
      return write;
    };
    // The same, for a value that a reservation's file holds: the store's by number (the daemon's, in `encoding`), or
    // one `reserveFile` handed out by path.
    const queueFile = (commit: (modified: number, expiry: ExpiryOptions) => Promise<void>, options: ExpiryOptions | undefined): Promise<void> => {
      const expiry = checkExpiry(options);
      if (released || !lease.held) throw new CacheError('CACHE_LOCK_NOT_HELD', 'This getset handle was released; its setter no longer writes.');
      writing++;
      written = true;
      const write = writes.then(() => commit(nowSeconds(), expiry)).finally(() => writing--);
      writes = write.catch(() => {});
      return write;
    };
    const commitFile = async (reservation: number, options: ExpiryOptions & { encoding: string }): Promise<void> => {
      const { encoding } = options;
      return queueFile((modified, expiry) => this.#commitStored(scope, id, reservation, { modified, encoding, ...expiry }, tierLease), options);
    };
    const setFile = async (path: string, options?: ExpiryOptions): Promise<void> => {
      const entry = this.#reserved.get(path);
      await queueFile((modified, expiry) => this.#commit(scope, id, entry, { modified, ...expiry }, tierLease), options);
      this.#reserved.committed(path, entry);
    };
    // With no write running, the lock is free before release returns, so a request behind it sees it free at once.
    const release = async (): Promise<void> => {
      if (released) return;
      released = true;
      const removed = files.release();
      if (writing > 0) await writes;
      // The lease's release is on its way to the tier before the lock goes, so that this daemon's next acquire of the
      // item reaches Redis after it (the tier sends one connection's commands in order); the lock goes without waiting
      // for Redis's answer, so that a release takes effect before the client's next request, as without a tier.
      const leaseReleased = tierLease && this.#tier!.release(tierLease);
      lease.release();
      unpin?.();
      // An item past its stale time that the caller did not replace goes now that its lock is free.
      if (expiredLocally && !written) this.#housekeeper.foundExpired(key);
      await Promise.all([leaseReleased, removed]);
    };
    const handle: LocalGetSetHandle<T> = { item, stale, set, setFile, commitFile, release, [Symbol.asyncDispose]: release };
    return handle;
  }

  /** `signal` and `owner` are for the daemon, not the public API: the signal drops the call while it waits for the lock. */
  async set(scope: Scope, id: string, value: T, options: LockOptions & ExpiryOptions & { modified: number }): Promise<void> {
    this.#checkOpen();
    const stored = this.#adapter.encode(value);
    const { modified } = options;
    const key = itemKey(scope, id);
    const lease = await this.#lock(key, 'exclusive', options);
    try {
      await this.#writeRecord(scope, id, { modified, value: stored, ...expiryFields(this.#now(), options) }, undefined);
    } finally {
      lease.release();
    }
  }

  async delete(scope: Scope, id: string, options: LockOptions = {}): Promise<void> {
    const lease = await this.#lock(itemKey(scope, id), 'exclusive', options);
    try {
      const local = (): Promise<void> => this.#io(() => this.#store.delete(scope, id));
      if (this.#sharing(scope) === 'shared') await this.#bothTiers(local, () => this.#tier!.delete(scope, id), { drop: local });
      else await local();
    } finally {
      lease.release();
    }
  }

  async clear(scope: Scope, options: LockOptions = {}): Promise<void> {
    const lease = await this.#lock(scope.prefix, 'subtree', options);
    try {
      const local = (): Promise<void> => this.#io(() => this.#store.clear(scope));
      // The root scope holds every top-level scope: the tier clears those it shares.
      if (this.#tier && (scope.path.length === 0 || this.#tier.sharing(scope) === 'shared')) await this.#bothTiers(local, () => this.#tier!.clear(scope), { drop: local });
      else await local();
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
      // The tier goes first: it stops dropping copies (those it could not drop now are dropped at the next attach,
      // from the positions it keeps) and releases its leases.
      await this.#tier?.close();
      await this.#housekeeper.close();
      if (this.#running > 0) await new Promise<void>((resolve) => (this.#drained = resolve));
      await this.#store.close();
      await releaseAll(this.#handleFiles);
      // The store's reservations went with it; the private ones go now.
      this.#reserved.drain();
      await this.#private.discardAll();
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

  #item(record: StoredRecord<V> | ReferenceRecord, files: HandleFiles): CacheItem<T> {
    const { modified, expiresAtMs, file } = record;
    // A stored value may itself be `undefined` (an as-given codec's): a record read by reference is told by its lack of one.
    const byReference = !('value' in record);
    const value = byReference ? undefined : record.value;
    const adapter = this.#adapter;
    const decode = adapter.decode.bind(adapter);
    const store = this.#store;
    // A value in a file of the store's (pinned while the handle is held) is that file; any other is written for it.
    const path = files.itemPath(() => {
      if (file && store.filePath) return store.filePath(file.name);
      if (!adapter.bytes) throw new TypeError('This cache has no bytes to give a path to.');
      return adapter.bytes(value as V);
    });
    const read =
      byReference
        ? async (): Promise<T> => {
            throw new TypeError('This item was read by reference (ReadOptions.reference): its bytes are in its file.');
          }
        : async (): Promise<T> => decode(value as V);
    const item = { modified, expires: expiresAtMs === undefined ? null : expiresAtMs / 1000, value: read, path };
    storedRecords.set(item, record);
    return item;
  }

  /** Pins the file of a record handed out (see {@link Store.pin}); `undefined` for a value not in a file. */
  #pin(record: StoredRecord<V> | ReferenceRecord): (() => void) | undefined {
    const { file } = record;
    return file && this.#store.pin ? this.#store.pin(file) : undefined;
  }

  /** The lease, made to unpin the file of the record handed out under it once released. */
  #pinned(lease: Lease, record: StoredRecord<V> | ReferenceRecord): Lease {
    const unpin = this.#pin(record);
    return unpin ? afterRelease(lease, unpin) : lease;
  }

  /** The lease, made to queue its item for removal (past its stale time) once released. */
  #removeOnRelease(lease: Lease): Lease {
    const housekeeper = this.#housekeeper;
    return afterRelease(lease, () => housekeeper.foundExpired(lease.key));
  }

  /** Reads the stored record under the held lease, releasing the lease if the read fails. */
  #readRecord(lease: Lease, scope: Scope, id: string, options?: { corruptIsMiss?: boolean }): StoredRecord<V> | undefined;
  #readRecord(lease: Lease, scope: Scope, id: string, options: { corruptIsMiss?: boolean; reference: boolean }): StoredRecord<V> | ReferenceRecord | undefined;
  #readRecord(
    lease: Lease,
    scope: Scope,
    id: string,
    options: { corruptIsMiss?: boolean; reference?: boolean } = {},
  ): StoredRecord<V> | ReferenceRecord | undefined {
    try {
      this.#checkOpen();
      const store = this.#store;
      const reference = options.reference === true;
      // The lease's key is the item's storage key: a store that reads by it spares making it again.
      const record = store.readKey
        ? (store.readKey(lease.key, reference) as StoredRecord<V> | ReferenceRecord | undefined)
        : reference && store.readReference
          ? store.readReference(scope, id)
          : store.read(scope, id);
      // A getset must find a missing file now, as a read of its bytes would, to compute the value again.
      if (options.corruptIsMiss && record?.file && !('value' in record)) store.checkFile?.(record.file);
      return record;
    } catch (error) {
      if (options.corruptIsMiss && isCacheError(error, 'CACHE_CORRUPT')) return undefined;
      lease.release();
      throw error;
    }
  }

  /**
   * Reserves an empty private file (0600) that any process of this user may write a value into, encoded as the codec
   * encodes it, for `setFile`: in the store's directory for a store that keeps files, else in this process's private
   * directory.
   */
  async reserveFile(): Promise<ReservedFile> {
    this.#checkOpen();
    const isPrivate = this.#store.reserve === undefined;
    const { reservation, path } = await (isPrivate ? this.#io(() => this.#private.reserve()) : this.reserve());
    if (this.#closed) {
      await this.#discardEntry({ reservation, private: isPrivate });
      throw closedError();
    }
    return this.#reserved.add(path, { reservation, private: isPrivate });
  }

  /** Stores the value the file at `path` (from `reserveFile`) holds as item `id`'s, under its exclusive lock. */
  async setFile(scope: Scope, id: string, path: string, options: LockOptions & ExpiryOptions & { modified: number }): Promise<void> {
    this.#checkOpen();
    const entry = this.#reserved.get(path);
    const lease = await this.#lock(itemKey(scope, id), 'exclusive', options);
    try {
      await this.#commit(scope, id, entry, options, undefined);
    } finally {
      lease.release();
    }
    this.#reserved.committed(path, entry);
  }

  /**
   * Reserves an empty private file in the store's directory, by number, for {@link LocalBackend.commitFile} or a
   * getset handle's `commitFile`: the daemon's way, whose clients name reservations by number.
   * @throws TypeError for a store that does not keep values in files.
   */
  async reserve(): Promise<{ reservation: number; path: string }> {
    this.#checkOpen();
    const store = this.#store;
    if (!store.reserve) throw new TypeError('This cache keeps no values in files: it reserves none.');
    return this.#io(() => store.reserve!());
  }

  /** Removes an uncommitted reservation's file of the store's; an unknown or committed reservation is left alone. */
  async discard(reservation: number): Promise<void> {
    await this.#store.discard?.(reservation);
  }

  /**
   * Writes `bytes` into the store's reservation `reservation` at `offsetBytes` (see {@link Store.append}); the bytes
   * count toward the size limit at once, and an eviction starts when they take the store past it.
   * @throws TypeError for a store that does not keep values in files; CacheError `CACHE_FILE_REFUSED`, `CACHE_STORAGE`.
   */
  async append(reservation: number, offsetBytes: number, bytes: Uint8Array): Promise<void> {
    const store = this.#store;
    if (!store.append) throw new TypeError('This cache keeps no values in files: it reserves none.');
    await this.#io(() => store.append!(reservation, offsetBytes, bytes));
    this.#housekeeper.grew();
  }

  /**
   * Stores the store's reservation `reservation`'s file, holding a value encoded in `encoding`, as item `id`'s value
   * under its exclusive lock, as `set` does.
   * @throws CacheError `CACHE_FILE_REFUSED` (nothing written), `CACHE_VALUE_TOO_LARGE`, `CACHE_OVER_SIZE_LIMIT`.
   */
  async commitFile(
    scope: Scope,
    id: string,
    reservation: number,
    options: LockOptions & ExpiryOptions & { modified: number; encoding: string },
  ): Promise<void> {
    this.#checkOpen();
    const lease = await this.#lock(itemKey(scope, id), 'exclusive', options);
    try {
      await this.#commitStored(scope, id, reservation, options, undefined);
    } finally {
      lease.release();
    }
  }

  #discardEntry(entry: Reservation): Promise<void> {
    return entry.private ? this.#private.discard(entry.reservation) : this.discard(entry.reservation);
  }

  /** Commits a reservation `reserveFile` handed out, under the item's exclusive lock. */
  async #commit(scope: Scope, id: string, entry: Reservation, options: ExpiryOptions & { modified: number }, tierLease: TierLease | undefined): Promise<void> {
    if (!entry.private) {
      const { encoding } = this.#adapter;
      if (encoding === undefined) throw new TypeError('This cache has no encoding to commit a file in.');
      await this.#commitStored(scope, id, entry.reservation, { ...options, encoding }, tierLease);
      return;
    }
    const { fromBytes } = this.#adapter;
    if (!fromBytes) throw new TypeError('This cache cannot take a value from a file.');
    const bytes = await this.#io(() => this.#private.read(entry.reservation));
    const record = { modified: options.modified, value: fromBytes(bytes), ...expiryFields(this.#now(), options) };
    await this.#writeRecord(scope, id, record, tierLease);
    await this.#private.discard(entry.reservation);
  }

  /**
   * Commits the store's reservation `reservation`, under the item's exclusive lock. In a `shared` scope (or with a
   * tier lease), the local commit comes first, then the value is read back and written to the tier, or, over the
   * tier's `maxValueBytes`, its shared copy is deleted (it stays local, as any large value does); a tier refusal then
   * drops the local copy, which the tier no longer vouches for.
   */
  async #commitStored(
    scope: Scope,
    id: string,
    reservation: number,
    options: ExpiryOptions & { modified: number; encoding: string },
    tierLease: TierLease | undefined,
  ): Promise<void> {
    const store = this.#store;
    if (!store.writeFile) throw new TypeError('This cache keeps no values in files: it commits none.');
    const record = { modified: options.modified, value: { encoding: options.encoding }, ...expiryFields(this.#now(), options) };
    await this.#io(() => store.writeFile!(scope, id, record, reservation));
    this.#housekeeper.written(itemKey(scope, id));
    if (tierLease || this.#sharing(scope) === 'shared') await this.#writeThroughCommitted(scope, id, tierLease);
  }

  /** Writes an item just committed from a file to the tier, read back from the store (only up to the tier's limit). */
  async #writeThroughCommitted(scope: Scope, id: string, tierLease: TierLease | undefined): Promise<void> {
    const tier = this.#tier!;
    try {
      const store = this.#store;
      const reference = store.readReference ? store.readReference(scope, id) : store.read(scope, id);
      if (!reference) throw new CacheError('CACHE_STORAGE', 'A value committed from a file could not be read back for the shared tier.');
      const sizeBytes = reference.file ? reference.file.lengthBytes : valueBytes((reference as StoredRecord<V>).value);
      // Over the limit the tier deletes its copy and reads no value: the record read without its file does.
      const record = sizeBytes <= (tier.maxValueBytes ?? Infinity) && reference.file ? store.read(scope, id) : reference;
      await tier.write(scope, id, record as StoredRecord<V>, tierLease ? { lease: tierLease, sizeBytes } : { sizeBytes });
    } catch (error) {
      await this.#io(() => this.#store.delete(scope, id)).catch(() => {});
      throw error;
    }
  }

  /** A getset handle's write: with a tier lease, to the tier first (fenced by the lease), then locally. */
  async #handleWrite(scope: Scope, id: string, value: T, expiry: ExpiryOptions, tierLease: TierLease | undefined): Promise<void> {
    const stored = this.#adapter.encode(value);
    await this.#writeRecord(scope, id, { modified: nowSeconds(), value: stored, ...expiryFields(this.#now(), expiry) }, tierLease);
  }

  /** Writes a record under the item's exclusive lock: to both tiers in a `shared` scope (or with a lease), else locally. */
  async #writeRecord(scope: Scope, id: string, record: StoredRecord<V>, tierLease: TierLease | undefined): Promise<void> {
    if (tierLease || this.#sharing(scope) === 'shared') await this.#writeBoth(scope, id, record, tierLease);
    else await this.#writeLocal(scope, id, record);
  }

  async #writeLocal(scope: Scope, id: string, record: StoredRecord<V>): Promise<void> {
    await this.#io(() => this.#store.write(scope, id, record));
    this.#housekeeper.written(itemKey(scope, id));
  }

  /**
   * Writes an item of a `shared` scope, under its exclusive lock: locally then to the tier, or, with a lease or a
   * strict tier, to the tier first (whose refusal leaves the local copy as it was) then locally.
   */
  async #writeBoth(scope: Scope, id: string, record: StoredRecord<V>, lease: TierLease | undefined): Promise<void> {
    const sizeBytes = valueBytes(record.value);
    await this.#bothTiers(
      () => this.#writeLocal(scope, id, record),
      () => this.#tier!.write(scope, id, record, lease ? { lease, sizeBytes } : { sizeBytes }),
      { tierFirst: lease !== undefined, drop: () => this.#io(() => this.#store.delete(scope, id)) },
    );
  }

  /**
   * Runs a change on both tiers, in the order the tier's policy says: the local one first (a tier failure is the
   * tier's to count), or with a strict tier (or `tierFirst`) the tier first, so that its refusal changes nothing here.
   * Then `drop` drops the item's (or scope's) local copy, which the tier no longer vouches for: after a local failure
   * that followed the tier's change, and after the tier's failure to answer, since a change that timed out may still
   * reach Redis later (and the change log never invalidates this daemon's own changes).
   */
  async #bothTiers(local: () => Promise<void>, shared: () => Promise<void>, options: { tierFirst?: boolean; drop: () => Promise<void> }): Promise<void> {
    if (!(options.tierFirst || this.#tier!.strict)) {
      await local();
      await shared();
      return;
    }
    try {
      await shared();
    } catch (error) {
      if (isCacheError(error, 'CACHE_TIER_UNAVAILABLE')) await options.drop().catch(() => {});
      throw error;
    }
    try {
      await local();
    } catch (error) {
      await options.drop().catch(() => {});
      throw error;
    }
  }

  /** The sharing of `scope`'s top-level scope: `local` without a tier. */
  #sharing(scope: Scope): ScopeSharing {
    return this.#tier ? this.#tier.sharing(scope) : 'local';
  }

  /** Whether reads in `scope` go through to the tier on a miss. */
  #shares(scope: Scope): boolean {
    return this.#tier !== undefined && this.#tier.sharing(scope) !== 'local';
  }

  /**
   * On a local miss in a scope the tier shares, under the item's lock (`lease`): the tier's copy as the local tier's
   * expiry sees it (`undefined`: a miss there too; `null`: the tier unavailable), kept as the local copy when fresh
   * (unless `keep` is false).
   */
  async #readThrough(lease: Lease, scope: Scope, id: string, options: { keep: boolean }): Promise<Found<V> | undefined | null> {
    let read: TierRead<V> | null;
    try {
      read = await this.#tier!.read(scope, id);
    } catch (error) {
      lease.release();
      throw error;
    }
    if (read === null) return null;
    if (options.keep) return this.#found(lease, scope, id, read);
    // Asked all the same, so that the tier forgets the read.
    const notKept = (): boolean => {
      read.copyable();
      return false;
    };
    return this.#found(lease, scope, id, { record: read.record, copyable: notKept });
  }

  /**
   * Whether the item's local copy may be served now (see {@link Trust}), in a backend with a tier: not while a drop of
   * it or of its scope is under way (but for what the drop keeps), nor while the tier says its scope is not in sync.
   */
  #trust(scope: Scope, id: string): Trust {
    // A `local` scope is never the tier's to drop: its copies are served whatever drop is under way.
    if ((this.#staleItems.size > 0 || this.#droppingScopes.size > 0) && this.#shares(scope)) {
      const key = itemKey(scope, id);
      const stale = this.#staleItems.get(key);
      if (stale !== undefined && !stale.keepIf?.()) return 'stale';
      for (const [prefix, dropping] of this.#droppingScopes) if (droppedBy(key, prefix) && !dropping.keepIf(scope, id)) return 'stale';
    }
    const tier = this.#tier!;
    return tier.inSync === undefined || tier.inSync(scope, id) ? 'serve' : 'unsure';
  }

  /**
   * On a local miss in a `shared` scope, under the item's exclusive lock (`lease`): takes the tier's lease, and
   * returns it with the tier's copy (kept locally when fresh); `'busy'` (the local lock released) when another
   * machine holds it and `wait` is false; `undefined` when the tier is unavailable (the local lock alone then holds).
   */
  async #acquireTier(
    lease: Lease,
    scope: Scope,
    id: string,
    options: LockOptions & { wait: boolean },
  ): Promise<{ lease: TierLease; found: Found<V> | undefined } | 'busy' | undefined> {
    let grant;
    try {
      if (options.wait) {
        const wait = tierWait(options.signal);
        try {
          grant = await this.#tier!.acquire(scope, id, { wait: true, signal: wait.signal });
        } finally {
          wait.end();
        }
      } else {
        grant = await this.#tier!.acquire(scope, id, { wait: false });
      }
    } catch (error) {
      lease.release();
      throw error;
    }
    if (grant === 'busy') {
      lease.release();
      return 'busy';
    }
    if (grant === null) return undefined;
    try {
      return { lease: grant.lease, found: await this.#found(lease, scope, id, grant) };
    } catch (error) {
      await this.#tier!.release(grant.lease);
      throw error;
    }
  }

  /**
   * What a read of the tier found, kept as the local copy when fresh and still copyable; releases `lease` if it throws.
   * Asks `copyable()` once of every read that found a record, whatever it then does, so the tier can forget the read.
   */
  async #found(lease: Lease, scope: Scope, id: string, read: TierRead<V> | null): Promise<Found<V> | undefined> {
    const record = read?.record;
    if (!record) return undefined;
    const copyable = read.copyable();
    const state = freshness(record, this.#now());
    if (state === 'gone') return undefined;
    const kept = state === 'fresh' && copyable && (await this.#keepCopy(lease, scope, id, record));
    return { record, state, kept };
  }

  /**
   * Writes the tier's copy as the local one, under the item's lock, unless another reader is writing it now; over the
   * size limit, or on a failing disk, the item is served without a copy. Whether it was written.
   */
  async #keepCopy(lease: Lease, scope: Scope, id: string, record: StoredRecord<V>): Promise<boolean> {
    const key = itemKey(scope, id);
    if (this.#copying.has(key)) return false;
    this.#copying.add(key);
    try {
      await this.#writeLocal(scope, id, record);
      return true;
    } catch (error) {
      if (this.#closed) {
        lease.release();
        throw error;
      }
      if (!isCacheError(error, 'CACHE_OVER_SIZE_LIMIT')) this.#logCopyFailure(error);
      return false;
    } finally {
      this.#copying.delete(key);
    }
  }

  #logCopyFailure(error: unknown): void {
    this.#copyFailures?.log('copy', `tier: an item read from the shared tier was served without a local copy: ${error instanceof Error ? error.message : String(error)}`);
  }

  /**
   * The tier's sink: drops the local copy of an item another machine changed, under its exclusive lock, unless
   * `keepIf` says to keep it once the lock is held (a write that held the lock meanwhile may have become pending).
   * Until then the copy reads as a miss (but what `keepIf` keeps), also for readers queued for the lock before it.
   */
  async #invalidate(scope: Scope, id: string, keepIf: (() => boolean) | undefined): Promise<void> {
    const key = itemKey(scope, id);
    const stale: StaleItem = { keepIf };
    this.#staleItems.set(key, stale);
    const acquired = this.#lock(key, 'exclusive', { owner: TIER_OWNER });
    const lease = acquired instanceof Promise ? await acquired : acquired;
    try {
      // Most changes elsewhere are to items this machine does not hold: those cost no write.
      const keep = keepIf?.() || (this.#store.sizeOf ? this.#store.sizeOf(key) === undefined : this.#holdsNothing(scope, id));
      if (!keep) await this.#io(() => this.#store.delete(scope, id));
      // Only once done: a failed one leaves the copy reading as a miss, until the invalidation tried again is done.
      // A later invalidation of the item, queued behind this one, keeps its own mark.
      if (this.#staleItems.get(key) === stale) this.#staleItems.delete(key);
    } finally {
      lease.release();
    }
  }

  #holdsNothing(scope: Scope, id: string): boolean {
    try {
      return this.#store.read(scope, id) === undefined;
    } catch {
      return false;
    }
  }

  /**
   * The tier's sink: drops the local copies of a scope and its nested scopes, under its subtree lock. For the root
   * scope, only what the tier shares: the top-level scopes it shares, and the root's own items if it shares those.
   */
  async #drop(scope: Scope): Promise<void> {
    const lease = await this.#lock(scope.prefix, 'subtree', { owner: TIER_OWNER });
    try {
      if (scope.path.length > 0) {
        await this.#io(() => this.#store.clear(scope));
        return;
      }
      for (const name of [...(this.#store.usage?.().scopes.keys() ?? [])]) {
        if (name === '' || !this.#shares(scopeOf([name]))) continue;
        await this.#io(() => this.#store.clear(scopeOf([name])));
      }
      if (this.#shares(ROOT_SCOPE)) await this.#dropRootItems();
    } finally {
      lease.release();
    }
  }

  /**
   * The tier's sink: hands the item's current local record (`undefined` when gone, or past its stale time) to `send`,
   * under its exclusive lock, so that no write of the item runs between the read and the tier's write; drops the
   * local copy when `send` says Redis holds a newer value. False, sending nothing, when the lock is not free now:
   * a `getset` may hold it for long, and waiting for it would hold up every other write-through.
   */
  async #replay(scope: Scope, id: string, send: (record: StoredRecord<V> | undefined) => Promise<boolean>): Promise<boolean> {
    this.#checkOpen();
    const lease = this.#locks.tryAcquire(itemKey(scope, id), 'exclusive', { owner: TIER_OWNER });
    if (lease === null) return false;
    await this.#replayUnder(lease, scope, id, send);
    return true;
  }

  /**
   * The tier's sink: {@link LocalBackend.#replay} once an exclusive request for the item, queued now, is granted
   * (readers asking after it wait behind it); false, sending nothing, when `signal` aborts it or the cache closes first.
   */
  async #replayQueued(scope: Scope, id: string, send: (record: StoredRecord<V> | undefined) => Promise<boolean>, signal: AbortSignal): Promise<boolean> {
    let lease: Lease;
    try {
      const acquired = this.#lock(itemKey(scope, id), 'exclusive', { owner: TIER_OWNER, signal });
      lease = acquired instanceof Promise ? await acquired : acquired;
    } catch (error) {
      if (signal.aborted || this.#closed) return false;
      throw error;
    }
    await this.#replayUnder(lease, scope, id, send);
    return true;
  }

  /** Sends the item's current local record under `lease` (its exclusive lock), dropping the local copy when Redis holds a newer one; releases it. */
  async #replayUnder(lease: Lease, scope: Scope, id: string, send: (record: StoredRecord<V> | undefined) => Promise<boolean>): Promise<void> {
    try {
      await this.#readable();
      let record: StoredRecord<V> | undefined;
      try {
        record = this.#store.read(scope, id);
      } catch (error) {
        // A damaged record is no value to share: the shared copy is deleted instead.
        if (!isCacheError(error, 'CACHE_CORRUPT')) throw error;
      }
      const written = await send(record !== undefined && freshness(record, this.#now()) === 'gone' ? undefined : record);
      if (!written) await this.#io(() => this.#store.delete(scope, id));
    } finally {
      lease.release();
    }
  }

  /**
   * The tier's sink: {@link LocalBackend.#replay} of every local item of the scope and its nested scopes (the root
   * scope: its own items only, each top-level scope being the tier's to ask for), page by page, one item at a time;
   * the items whose lock was not free are returned.
   */
  async #replayScope(
    scope: Scope,
    send: (scope: Scope, id: string, record: StoredRecord<V> | undefined) => Promise<boolean>,
    onHeld?: (scope: Scope, id: string) => void,
  ): Promise<{ scope: Scope; id: string }[]> {
    const held: { scope: Scope; id: string }[] = [];
    await this.#eachItem(scope, async (current, id) => {
      if (!(await this.#replay(current, id, (record) => send(current, id, record)))) {
        held.push({ scope: current, id });
        onHeld?.(current, id);
      }
    });
    return held;
  }

  /**
   * Visits every local item of the scope and its nested scopes (the root scope: its own items only, each top-level
   * scope being the tier's to ask for), page by page, one item at a time.
   */
  async #eachItem(scope: Scope, visit: (scope: Scope, id: string) => Promise<void>): Promise<void> {
    await this.#eachPage(scope, async (current, ids) => {
      for (const id of ids) await visit(current, id);
    });
  }

  /**
   * The tier's sink: drops the local copies of a scope and its nested scopes (the root scope: its own items only) a page
   * at a time, each page in one write under its items' exclusive locks (taken only if free now), keeping those
   * `keepIf` says to keep once the lock is held. The scope reads as misses (but what `keepIf` keeps) until every page
   * is walked; then `synced` is called. An item whose lock is held now (a `getset`, a reader's handle) is not waited
   * for: if `keepIf` keeps it, it is skipped (keeping a copy is always safe: its own change waits, and wins in
   * Redis); else it reads as a miss until its lock comes free and it is dropped, which the promise waits for, with one
   * lock request per item however often the drop is tried again.
   */
  async #dropExcept(scope: Scope, keepIf: (scope: Scope, id: string) => boolean, synced: (() => void) | undefined): Promise<void> {
    const { prefix } = scope;
    let dropping = this.#droppingScopes.get(prefix);
    if (dropping === undefined) this.#droppingScopes.set(prefix, (dropping = { walks: 0, failed: false, keepIf }));
    dropping.walks++;
    const waiting: Promise<void>[] = [];
    let walked = false;
    try {
      await this.#eachPage(scope, async (current, ids) => {
        const leases: Lease[] = [];
        const doomed: string[] = [];
        try {
          for (const id of ids) {
            const lease = this.#locks.tryAcquire(itemKey(current, id), 'exclusive', { owner: TIER_OWNER });
            if (lease === null) {
              if (!keepIf(current, id)) waiting.push(this.#dropHeld(current, id, () => keepIf(current, id)));
              continue;
            }
            leases.push(lease);
            if (!keepIf(current, id)) doomed.push(id);
          }
          if (doomed.length > 0) {
            await this.#io(() => this.#deleteMany(current, doomed));
            // Dropped under their locks: a mark left by an invalidation of one that failed (and is no longer tried
            // again, its page of the log overtaken by this drop) would read its next copy as a miss for good.
            if (this.#staleItems.size > 0) for (const id of doomed) this.#staleItems.delete(itemKey(current, id));
          }
        } finally {
          for (const lease of leases) lease.release();
        }
      });
      walked = true;
    } finally {
      dropping.walks--;
      // A failed walk leaves the scope reading as misses until a later one succeeds.
      if (walked) dropping.failed = false;
      else dropping.failed = true;
      if (dropping.walks === 0 && !dropping.failed) this.#droppingScopes.delete(prefix);
    }
    synced?.();
    await Promise.all(waiting);
  }

  /**
   * Drops a held item's copy once its lock comes free (see {@link LocalBackend.#invalidate}): a drop tried again
   * while it waits joins the request already queued, rather than queue another.
   */
  #dropHeld(scope: Scope, id: string, keepIf: () => boolean): Promise<void> {
    const key = itemKey(scope, id);
    let dropped = this.#heldDrops.get(key);
    if (dropped === undefined) {
      dropped = this.#invalidate(scope, id, keepIf).finally(() => this.#heldDrops.delete(key));
      // Heard by the drop that waits for it, if any; a drop that failed meanwhile no longer does.
      dropped.catch(() => {});
      this.#heldDrops.set(key, dropped);
    }
    return dropped;
  }

  /** Deletes the items of `scope` named by `ids` (their locks held) in one write where the store can. */
  async #deleteMany(scope: Scope, ids: readonly string[]): Promise<void> {
    if (this.#store.deleteMany) await this.#store.deleteMany(scope, ids);
    else await Promise.all(ids.map((id) => this.#store.delete(scope, id)));
  }

  /**
   * Visits every local item of the scope and its nested scopes (the root scope: its own items only, each top-level
   * scope being the tier's to ask for), a page of ids at a time.
   */
  async #eachPage(scope: Scope, visit: (scope: Scope, ids: string[]) => Promise<void>): Promise<void> {
    const scopes = [scope];
    for (let next = scopes.pop(); next !== undefined; next = scopes.pop()) {
      const current = next;
      let cursor: string | undefined;
      do {
        const page: StoreListing = await this.#io(() => this.#store.list(current, cursor === undefined ? { limit: 1000 } : { cursor, limit: 1000 }));
        if (page.items.length > 0) await visit(current, page.items.map(({ id }) => id));
        if (current.path.length > 0) for (const name of page.scopes) scopes.push(childScope(current, name));
        cursor = page.cursor ?? undefined;
      } while (cursor !== undefined);
    }
  }

  /** Deletes the items directly in the root scope, page by page (the caller holds the root's subtree lock). */
  async #dropRootItems(): Promise<void> {
    let cursor: string | undefined;
    do {
      const page: StoreListing = await this.#io(() => this.#store.list(ROOT_SCOPE, cursor === undefined ? { limit: 1000 } : { cursor, limit: 1000 }));
      for (const item of page.items) await this.#io(() => this.#store.delete(ROOT_SCOPE, item.id));
      cursor = page.cursor ?? undefined;
    } while (cursor !== undefined);
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

/**
 * Whether a drop of the scope of `prefix` drops the item of storage key `key`: one of the scope and its nested scopes,
 * but for the root scope (prefix `''`), whose drop walks its own items only (keys `:id`), each top-level scope being
 * the tier's to drop on its own.
 */
function droppedBy(key: string, prefix: string): boolean {
  return prefix === '' ? key.startsWith(':') : key.startsWith(prefix);
}

/** `lease`, made to run `then` once, right after it is released. */
function afterRelease(lease: Lease, then: () => void): Lease {
  return {
    key: lease.key,
    mode: lease.mode,
    get held() {
      return lease.held;
    },
    release() {
      if (!lease.held) return;
      lease.release();
      then();
    },
  };
}
