import type { Lease, LockOwner, LockTable } from './lock-table.js';
import { parseItemKey, topScopeName } from './scope-path.js';
import type { Store } from './store.js';

/** The most items removed in one batch, between which requests are served. */
export const HOUSEKEEPING_BATCH = 256;
/** How often expired items are swept by default, in milliseconds. */
export const SWEEP_INTERVAL_MS = 10_000;
/** An eviction goes down to this share of the size limit. */
export const EVICTION_TARGET = 0.9;
/** The most expired items a dry run of `gc` looks at (it cannot page through them without removing them). */
export const DRY_RUN_MAX_EXPIRED = 100_000;
/** Locked items an eviction or sweep pass skips before it gives up until the next one. */
const MAX_SKIPPED = 10_000;
/**
 * How many top-level scopes get removal counts of their own (as many as the daemon's hits and misses): beyond it,
 * removals in new names count in the totals only, so that many scope names cannot grow the memory.
 */
export const MAX_COUNTED_SCOPES = 10_000;
/** A failed background pass is logged at most once in this many milliseconds; the others are counted in the next line. */
export const FAILURE_LOG_INTERVAL_MS = 60_000;

/** Who holds the locks of the items being removed, as `hoard locks` shows it. */
export const EVICTION_OWNER: LockOwner = Object.freeze({ name: 'hoard eviction' });

/** What a pass removed, or would remove. */
export interface RemovalCounts {
  evictedItems: number;
  evictedBytes: number;
  expiredItems: number;
  expiredBytes: number;
}

/** What {@link Housekeeper.gc} removed (or, in a dry run, would remove) and the counted size after. */
export interface GcReport extends RemovalCounts {
  /** The counted bytes after the pass (projected in a dry run); `null` for a store that does not count. */
  sizeBytes: number | null;
}

/** The removals since the cache opened, in total and by top-level scope (`''` for the root's own items). */
export interface RemovalCounters extends RemovalCounts {
  readonly scopes: ReadonlyMap<string, RemovalCounts>;
}

export interface HousekeeperOptions {
  /** How often expired items are swept, in milliseconds; default 10 s. */
  sweepIntervalMs?: number;
  /** Where a failed background pass is told, at most one line a minute (the others counted); default nowhere. */
  log?: (line: string) => void;
  /**
   * Whether an item is kept from eviction (its record is a change the shared tier still has to write through): an
   * eviction passes over it, as over a locked one, and evicts it only when the other items cannot bring the store down
   * to the target; expiry still removes it. Default: none.
   */
  pinned?: ((key: string) => boolean) | undefined;
  /** Hears of each pinned item evicted all the same, because the other items could not bring the store down to the target. */
  pinnedEvicted?: ((key: string) => void) | undefined;
}

function noRemovals(): RemovalCounts {
  return { evictedItems: 0, evictedBytes: 0, expiredItems: 0, expiredBytes: 0 };
}

function nextTurn(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

type Kind = 'evicted' | 'expired';

/**
 * Removes a store's expired items and, when it passes its size limit, its least recently used ones, in the
 * background: in batches of at most {@link HOUSEKEEPING_BATCH}, yielding to the event loop between them. Each
 * item is removed under its exclusive lock taken with `tryAcquire`, so an item whose lock is held or waited for is
 * skipped, never removed. Expired items go first: those found by reads (lazily), then the store's expiry index.
 *
 * The owner tells it of every completed write ({@link Housekeeper.written}): a key listed by the store before such a
 * write is skipped, since the list may be stale (the write may have made the item fresh or recent again).
 */
export class Housekeeper {
  readonly #store: Store<unknown>;
  readonly #locks: LockTable;
  readonly #now: () => number;
  readonly #timer: NodeJS.Timeout | undefined;
  /** Items that reads found past their stale time, to remove next. */
  readonly #found = new Set<string>();
  /** While the store lists a batch of keys to remove: the keys written meanwhile, which the batch then skips. */
  #writtenSinceListing: Set<string> | undefined;
  readonly #counters = noRemovals();
  readonly #scopeCounters = new Map<string, RemovalCounts>();
  readonly #log: ((line: string) => void) | undefined;
  readonly #pinned: (key: string) => boolean;
  readonly #pinnedEvicted: (key: string) => void;
  #failures = 0;
  /** When a failure was last logged (`performance.now`), and the failures since that were not. */
  #failureLoggedAtMs = -Infinity;
  #failuresNotLogged = 0;
  /** One task at a time: background passes and `gc` calls run one after another. */
  #chain: Promise<unknown> = Promise.resolve();
  #scheduled = false;
  #wantSweep = false;
  #wantEviction = false;
  /**
   * The counted bytes when an eviction last ended above the limit (its items locked, or written while it listed them):
   * writes start the next one once the count has grown by a hundredth of the limit since, or at the next sweep, rather
   * than one pass per write over the same locked items.
   */
  #stuckAtBytes: number | undefined;
  #closed = false;

  constructor(store: Store<unknown>, locks: LockTable, now: () => number, options: HousekeeperOptions = {}) {
    this.#store = store;
    this.#locks = locks;
    this.#now = now;
    const { log } = options;
    if (log !== undefined && typeof log !== 'function') throw new TypeError(`log must be a function, got ${String(log)}.`);
    this.#log = log;
    this.#pinned = options.pinned ?? (() => false);
    this.#pinnedEvicted = options.pinnedEvicted ?? (() => {});
    const intervalMs = options.sweepIntervalMs ?? SWEEP_INTERVAL_MS;
    if (!(typeof intervalMs === 'number' && intervalMs > 0)) {
      throw new TypeError(`sweepIntervalMs must be a number of milliseconds above 0, got ${String(intervalMs)}.`);
    }
    if ((store.expired || this.#evicts()) && Number.isFinite(intervalMs)) {
      this.#timer = setInterval(() => {
        this.#wantSweep = true;
        this.#stuckAtBytes = undefined;
        if (this.#overLimit()) this.#wantEviction = true;
        this.#schedule();
      }, intervalMs).unref();
    }
    // A store opened above its limit (a lower limit than last time) evicts at once, not at the first write or tick.
    if (this.#overLimit()) {
      this.#wantEviction = true;
      this.#schedule();
    }
  }

  /** Queues an item that a read found past its stale time, for removal once its lock is free. */
  foundExpired(key: string): void {
    if (this.#closed) return;
    this.#found.add(key);
    this.#schedule();
  }

  /** Hears of a completed write of `key`; starts an eviction if the store is now over its limit. */
  written(key: string): void {
    this.#found.delete(key);
    this.#writtenSinceListing?.add(key);
    if (!this.#wantEviction && this.#overLimit() && !this.#stuck()) {
      this.#wantEviction = true;
      this.#schedule();
    }
  }

  /** Hears that the store grew other than by a write of an item (a reservation's file); starts an eviction if now over its limit. */
  grew(): void {
    if (!this.#wantEviction && this.#overLimit() && !this.#stuck()) {
      this.#wantEviction = true;
      this.#schedule();
    }
  }

  /** How many background passes failed since the cache opened (each is tried again at the next write or sweep). */
  failures(): number {
    return this.#failures;
  }

  /** The removals since the cache opened. */
  counters(): RemovalCounters {
    const scopes = new Map<string, RemovalCounts>();
    for (const [name, counts] of this.#scopeCounters) scopes.set(name, { ...counts });
    return { ...this.#counters, scopes };
  }

  /**
   * Removes expired items and, above 90% of the size limit, the least recently used ones down to it, now; or, with
   * `dryRun`, only says what it would remove. Runs after any pass under way.
   */
  gc(options: { dryRun: boolean }): Promise<GcReport> {
    return this.#enqueue(async () => {
      const report = { ...noRemovals(), sizeBytes: this.#totals()?.bytes ?? null };
      // Reservations that other processes write count as large as their files are now.
      await this.#store.measureReserved?.();
      report.sizeBytes = this.#totals()?.bytes ?? null;
      if (options.dryRun) {
        await this.#dryRun(report);
        return report;
      }
      await this.#removeFound(report);
      await this.#sweep(report);
      await this.#evict(report, EVICTION_TARGET);
      report.sizeBytes = this.#totals()?.bytes ?? null;
      return report;
    });
  }

  /** Stops the timer and waits for the batch under way; later calls do nothing. */
  async close(): Promise<void> {
    this.#closed = true;
    if (this.#timer) clearInterval(this.#timer);
    this.#found.clear();
    await this.#chain;
    if (this.#failuresNotLogged > 0) this.#log?.(`housekeeping: ${this.#failuresNotLogged} more failed passes were not logged`);
  }

  /** Logs a failed background pass: one line a minute at most, which counts the failures left out since the last. */
  #logFailure(error: unknown): void {
    if (!this.#log) return;
    const nowMs = performance.now();
    if (nowMs - this.#failureLoggedAtMs < FAILURE_LOG_INTERVAL_MS) {
      this.#failuresNotLogged++;
      return;
    }
    const message = error instanceof Error ? error.message : String(error);
    const more = this.#failuresNotLogged > 0 ? ` (${this.#failuresNotLogged} more failed passes since the last line)` : '';
    this.#failureLoggedAtMs = nowMs;
    this.#failuresNotLogged = 0;
    this.#log(`housekeeping failed, tried again at the next write or sweep: ${message}${more}`);
  }

  /** The counted total and limit: the store's `totals` (constant time), else its `usage`; `undefined` for a store that does not count. */
  #totals(): { bytes: number; limitBytes: number | null } | undefined {
    return this.#store.totals?.() ?? this.#store.usage?.();
  }

  /** Whether the last eviction ended above the limit and the count has not grown by a hundredth of it since. */
  #stuck(): boolean {
    if (this.#stuckAtBytes === undefined) return false;
    const { bytes, limitBytes } = this.#totals()!;
    if (limitBytes !== null && bytes < this.#stuckAtBytes + limitBytes / 100) return true;
    this.#stuckAtBytes = undefined;
    return false;
  }

  #evicts(): boolean {
    return (this.#store.totals !== undefined || this.#store.usage !== undefined) && this.#store.leastRecent !== undefined;
  }

  #overLimit(): boolean {
    if (!this.#evicts()) return false;
    const { bytes, limitBytes } = this.#totals()!;
    return limitBytes !== null && bytes > limitBytes;
  }

  #enqueue<R>(task: () => Promise<R>): Promise<R> {
    const run = this.#chain.then(task);
    this.#chain = run.catch(() => {});
    return run;
  }

  /** Queues one background pass, unless one is queued and not started yet (it will see what is wanted now). */
  #schedule(): void {
    if (this.#scheduled || this.#closed) return;
    this.#scheduled = true;
    void this.#enqueue(async () => {
      // A turn first: the writes and reads of this turn go before, and a burst of them starts one pass.
      await nextTurn();
      this.#scheduled = false;
      const sweep = this.#wantSweep;
      let evict = this.#wantEviction;
      this.#wantSweep = this.#wantEviction = false;
      const report = { ...noRemovals(), sizeBytes: null };
      try {
        if (sweep && this.#store.measureReserved) {
          // At each timed sweep, reservations that other processes write count as large as their files are now.
          await this.#store.measureReserved();
          if (this.#overLimit()) evict = true;
        }
        await this.#removeFound(report);
        if (sweep || evict) await this.#sweep(report);
        if (evict) {
          const limitBytes = this.#totals()!.limitBytes;
          if (limitBytes !== null) await this.#evict(report, EVICTION_TARGET);
          this.#stuckAtBytes = this.#overLimit() ? this.#totals()!.bytes : undefined;
        }
      } catch (error) {
        // A store that fails now (a full disk) is tried again at the next write or sweep; a closed one needs no word.
        if (this.#closed) return;
        this.#failures++;
        this.#logFailure(error);
      }
    });
  }

  async #removeFound(report: RemovalCounts): Promise<void> {
    while (this.#found.size > 0 && !this.#closed) {
      const keys: string[] = [];
      for (const key of this.#found) {
        this.#found.delete(key);
        keys.push(key);
        if (keys.length === HOUSEKEEPING_BATCH) break;
      }
      // A key still locked stays where it is: the sweep finds it later.
      await this.#removeBatch(keys, 'expired', report);
      await nextTurn();
    }
  }

  /** Removes the items past their stale time that the store's expiry index lists. */
  async #sweep(report: RemovalCounts): Promise<void> {
    if (!this.#store.expired) return;
    const skipped = new Set<string>();
    while (!this.#closed && skipped.size <= MAX_SKIPPED) {
      this.#writtenSinceListing = new Set();
      // The index gives the earliest first, whatever it skipped: ask past the items this pass cannot take.
      const keys = (await this.#store.expired(this.#now(), HOUSEKEEPING_BATCH + skipped.size)).filter((key) => !skipped.has(key));
      if (keys.length === 0) return;
      const removal = await this.#removeBatch(keys, 'expired', report);
      for (const key of removal.skipped) skipped.add(key);
      // Keys whose items are gone (a stray index entry, a delete meanwhile) are not asked for again.
      for (const key of removal.gone) skipped.add(key);
      if (removal.removed === 0 && removal.skipped.length === 0) return;
      await nextTurn();
    }
  }

  /**
   * Evicts the least recently used items until the counted size is at most `target` of the limit, passing over pinned
   * ones; then, only if that was not enough, the least recently used pinned ones until it is.
   */
  async #evict(report: RemovalCounts, target: number): Promise<void> {
    if (!this.#evicts()) return;
    await this.#walk(report, target, 'unpinned');
    await this.#walk(report, target, 'pinned');
  }

  /** One walk from the least recently used item, removing those of `which` until the counted size is at most `target` of the limit. */
  async #walk(report: RemovalCounts, target: number, which: 'pinned' | 'unpinned'): Promise<void> {
    let cursor: string | undefined;
    let skipped = 0;
    while (!this.#closed && skipped <= MAX_SKIPPED) {
      const { bytes, limitBytes } = this.#totals()!;
      if (limitBytes === null || bytes <= limitBytes * target) break;
      this.#writtenSinceListing = new Set();
      const { keys, next } = await this.#store.leastRecent!(cursor === undefined ? { limit: HOUSEKEEPING_BATCH } : { cursor, limit: HOUSEKEEPING_BATCH });
      // Only as many as the target needs: the count may have changed while the store listed them.
      const now = this.#totals()!;
      const excess = now.limitBytes === null ? 0 : now.bytes - now.limitBytes * target;
      if (excess <= 0) break;
      const removal = await this.#removeBatch(keys, 'evicted', report, excess, which);
      skipped += removal.skipped.length;
      // A page with nothing to remove (the store skipped stray index entries, or every key listed was gone) goes on from
      // where the store stopped: the cursor moves on each time, so the pass ends, and never stops short behind strays.
      // A batch cut short by the target starts again from the least recent: the count may have grown meanwhile.
      if (removal.short) cursor = undefined;
      else if (next === null) break;
      else cursor = next;
      await nextTurn();
    }
  }

  /**
   * Removes the items whose exclusive locks can be taken now and that were not written since the store listed them,
   * each under its lock, until the bytes taken reach `budgetBytes`; returns the keys it skipped for their locks, those
   * whose items were gone once locked (counted as nothing), how many it removed and their bytes, and whether it stopped
   * short of the end of `keys` because of the budget. An eviction takes the `unpinned` items only, or the `pinned` ones
   * only.
   */
  async #removeBatch(
    keys: readonly string[],
    kind: Kind,
    report: RemovalCounts,
    budgetBytes = Infinity,
    which: 'pinned' | 'unpinned' = 'unpinned',
  ): Promise<{ skipped: string[]; gone: string[]; removed: number; removedBytes: number; short: boolean }> {
    const skipped: string[] = [];
    const gone: string[] = [];
    const taken: { key: string; lease: Lease; bytes: number }[] = [];
    const written = this.#writtenSinceListing;
    this.#writtenSinceListing = undefined;
    let plannedBytes = 0;
    let short = false;
    const pinnedKeys = new Set<string>();
    for (const key of keys) {
      if (plannedBytes >= budgetBytes) {
        short = true;
        break;
      }
      // Pinned: passed over, as a locked item is, but not counted against the pass's bound (it may stay pinned for long).
      if (kind === 'evicted') {
        const pinned = this.#pinned(key);
        if (pinned) pinnedKeys.add(key);
        if (pinned !== (which === 'pinned')) continue;
      }
      const lease = written?.has(key) ? null : this.#locks.tryAcquire(key, 'exclusive', { owner: EVICTION_OWNER });
      if (!lease) {
        skipped.push(key);
        continue;
      }
      // Sized under the lock, before the delete: an item deleted since the listing is not counted.
      const bytes = this.#sizeOf(key);
      if (bytes === undefined) {
        lease.release();
        gone.push(key);
        continue;
      }
      plannedBytes += bytes;
      taken.push({ key, lease, bytes });
    }
    const results = await Promise.allSettled(
      taken.map(async ({ key, lease }) => {
        try {
          const { scope, id } = parseItemKey(key);
          await this.#store.delete(scope, id);
        } finally {
          lease.release();
        }
      }),
    );
    let failure: unknown;
    let removedBytes = 0;
    results.forEach((result, index) => {
      if (result.status === 'rejected') {
        failure ??= result.reason;
        return;
      }
      const { key, bytes } = taken[index]!;
      removedBytes += bytes;
      if (pinnedKeys.has(key)) this.#pinnedEvicted(key);
      this.#count(report, kind, bytes);
      this.#count(this.#counters, kind, bytes);
      const name = topScopeName(key);
      let counts = this.#scopeCounters.get(name);
      if (!counts) {
        if (this.#scopeCounters.size >= MAX_COUNTED_SCOPES) return;
        this.#scopeCounters.set(name, (counts = noRemovals()));
      }
      this.#count(counts, kind, bytes);
    });
    if (failure !== undefined) throw failure;
    const removed = results.filter((result) => result.status === 'fulfilled').length;
    return { skipped, gone, removed, removedBytes, short };
  }

  #count(counts: RemovalCounts, kind: Kind, bytes: number): void {
    if (kind === 'evicted') {
      counts.evictedItems++;
      counts.evictedBytes += bytes;
    } else {
      counts.expiredItems++;
      counts.expiredBytes += bytes;
    }
  }

  /**
   * The counted bytes of an item, from the store when it can say (`undefined`: the item is gone); for a store that
   * cannot, the average of what it counts (exact for items of one size), or 0 for a store that does not count.
   */
  #sizeOf(key: string): number | undefined {
    if (this.#store.sizeOf) return this.#store.sizeOf(key);
    const usage = this.#store.usage?.();
    return usage && usage.items > 0 ? Math.round(usage.bytes / usage.items) : 0;
  }

  /** Counts what a pass would remove now, removing nothing: the same order and the same skipped locks. */
  async #dryRun(report: GcReport): Promise<void> {
    const isFree = (key: string): boolean => {
      const lease = this.#locks.tryAcquire(key, 'exclusive', { owner: EVICTION_OWNER });
      lease?.release();
      return lease !== null;
    };
    const expired = new Set<string>([...this.#found]);
    if (this.#store.expired) for (const key of await this.#store.expired(this.#now(), DRY_RUN_MAX_EXPIRED)) expired.add(key);
    for (const key of expired) {
      const size = this.#sizeOf(key);
      if (size === undefined || !isFree(key)) continue;
      this.#count(report, 'expired', size);
    }
    if (!this.#evicts()) return;
    const { bytes, limitBytes } = this.#totals()!;
    let projected = bytes - report.expiredBytes;
    report.sizeBytes = projected;
    if (limitBytes === null) return;
    // As a pass: the others down to the target, then pinned ones if that was not enough.
    const enough = (): boolean => projected <= limitBytes * EVICTION_TARGET;
    const walk = async (pinned: boolean): Promise<void> => {
      let cursor: string | undefined;
      while (!enough()) {
        const { keys, next } = await this.#store.leastRecent!(cursor === undefined ? { limit: HOUSEKEEPING_BATCH } : { cursor, limit: HOUSEKEEPING_BATCH });
        for (const key of keys) {
          if (enough()) break;
          if (expired.has(key) || this.#pinned(key) !== pinned || !isFree(key)) continue;
          const size = this.#sizeOf(key);
          if (size === undefined) continue;
          this.#count(report, 'evicted', size);
          projected -= size;
        }
        if (next === null) break;
        cursor = next;
        await nextTurn();
      }
    };
    await walk(false);
    await walk(true);
    report.sizeBytes = projected;
  }
}
