import type { Scope } from './scope-path.js';
import type { StoredRecord } from './store.js';

/**
 * How a top-level scope uses the shared tier: `local` keeps it on this machine (the default), `shared-read` reads
 * through the tier but never writes to it, `shared` reads and writes through it. The daemon's setting, never a client's.
 */
export type ScopeSharing = 'local' | 'shared-read' | 'shared';

/** A lease on one item in the shared tier, held by this daemon for one `getset` handle. */
export interface TierLease {
  /** The fencing number of the grant: larger than every earlier grant's and write's for the same top-level scope. */
  readonly fence: number;
  /** False once the lease is known lost (a renewal found it expired or taken), or released. */
  readonly held: boolean;
}

/** What a read through the tier found. */
export interface TierRead<V> {
  /** The shared copy, with its `modified` and expiry; `undefined` on a shared miss. */
  readonly record: StoredRecord<V> | undefined;
  /**
   * Whether the record may still be kept as the local copy: false once a change to the item (or a clear of a scope
   * holding it) arrived after the read began. Ask right before writing the copy, while holding the item's lock.
   */
  copyable(): boolean;
}

/** A granted lease and the item's shared copy as of the grant. */
export interface TierGrant<V> extends TierRead<V> {
  readonly lease: TierLease;
}

/**
 * What the tier calls on the local store: to drop local copies that another machine's changes made stale, and to read
 * the current local records of changes Redis did not take, which it then writes through.
 */
export interface TierSink<V = unknown> {
  /**
   * Drops the local copy of one item, under its exclusive lock, unless `keepIf`, asked once the lock is held, says to
   * keep it (the item's own change waits to be written through, and wins in Redis).
   */
  invalidate(scope: Scope, id: string, options?: { keepIf?(): boolean }): Promise<void>;
  /**
   * Drops the local copies of a scope and its nested scopes, under its subtree lock; or, with `keepIf`, a page of items
   * at a time, each page in one write under its items' locks (the root scope: its own items only), keeping those
   * `keepIf` says to keep (asked under the item's lock, or without it for a held item it keeps: a held item is not
   * waited for then). With `keepIf`, the scope's copies read as misses from the call on (but those `keepIf` keeps),
   * until `synced` is called: every item not held is dropped then, and each held one reads as a miss until its lock
   * comes free and it is dropped, which the promise waits for. A drop that fails leaves the scope reading as misses
   * until a later drop of it succeeds.
   */
  drop(scope: Scope, options?: { keepIf?(scope: Scope, id: string): boolean; synced?(): void }): Promise<void>;
  /** The names of the top-level scopes that hold local data now (the store's counted scopes). */
  localScopes(): Iterable<string>;
  /**
   * Calls `send` with the item's current local record (`undefined` when it is gone or past its stale time), under the
   * item's exclusive lock, held until `send` settles; when `send` resolves to false (Redis refused the write-through:
   * it holds a newer value), drops the local copy before releasing the lock. Resolves false, calling nothing, when the
   * lock cannot be taken at once (a `getset` holds the item, or a reader): the caller tries again later, and a held
   * item never holds up the others. Rejects as `send` does.
   */
  replay(scope: Scope, id: string, send: (record: StoredRecord<V> | undefined) => Promise<boolean>): Promise<boolean>;
  /**
   * {@link TierSink.replay} for an item whose lock was held: queues an exclusive request for it (readers asking after it
   * wait behind it, so that readers overlapping without pause let it through), calls `send` once it is granted, and
   * releases. Resolves false, calling nothing, when `signal` aborts the wait (or the store closes) before the grant.
   */
  replayQueued(scope: Scope, id: string, send: (record: StoredRecord<V> | undefined) => Promise<boolean>, options: { signal: AbortSignal }): Promise<boolean>;
  /**
   * Calls {@link TierSink.replay} for every local item of the scope and its nested scopes, listed page by page, one
   * item at a time; stops at the first rejection. Resolves to the items whose lock could not be taken at once, each
   * also told to `onHeld` as soon as found.
   */
  replayScope(
    scope: Scope,
    send: (scope: Scope, id: string, record: StoredRecord<V> | undefined) => Promise<boolean>,
    onHeld?: (scope: Scope, id: string) => void,
  ): Promise<{ scope: Scope; id: string }[]>;
}

/** The tier's figures for `hoard status`. */
export interface TierStatus {
  /** `connected`; `degraded` (unreachable or failing: `lastError` says why); `catching-up` on the change log after a cut. */
  readonly state: 'connected' | 'degraded' | 'catching-up';
  /** Where the tier is, without credentials. */
  readonly url: string;
  readonly lastError: string | null;
  /**
   * On a Redis Cluster, the masters (`host:port`) that stopped answering while the others did: commands to their slots
   * fail at once (reads are misses, writes wait to be written through) until they answer a PING. Empty otherwise.
   */
  readonly downNodes: readonly string[];
  /** Round-trip time of the tier's recent commands: median and 99th percentile, in milliseconds; null before any. */
  readonly latencyP50Ms: number | null;
  readonly latencyP99Ms: number | null;
  readonly sharedHits: number;
  readonly sharedMisses: number;
  readonly sharedWrites: number;
  /** Tier commands that failed or timed out (reads, writes, leases, the change log). */
  readonly errors: number;
  /** Commands the tier refused for want of permission (an ACL), a subset of `errors`. */
  readonly refused: number;
  readonly leases: number;
  /**
   * Writes the tier refused because their lease was lost (a newer grant or write exists), and write-throughs of a
   * lease's write refused for a newer write, grant or clear (the local copy was dropped).
   */
  readonly fencedWrites: number;
  /** `getset` calls in a shared scope that held the local lock only, because the tier was unavailable. */
  readonly localFallbacks: number;
  /** Local items dropped because another machine changed them; local scopes dropped because the change log no longer reached back. */
  readonly invalidations: number;
  readonly droppedScopes: number;
  /**
   * Changes in shared scopes that Redis did not take yet (items set or deleted, scopes cleared, whole top-level scopes
   * past the bound), written through once it answers.
   */
  readonly pendingChanges: number;
  /**
   * Items evicted before their change was written through, because such items held more than half of `--max-size`:
   * Redis does not get their values (it drops its copy, or the whole scope's pass leaves them out).
   */
  readonly evictedBeforeWriteThrough: number;
  /** Each top-level scope that is not `local`, by name (`*` stands for every scope not named). */
  readonly sharing: Readonly<Record<string, ScopeSharing>>;
}

/**
 * The shared second tier behind a daemon's local store: `LocalBackend` calls it, in shared scopes only, while holding
 * the item's local lock (a scope's subtree lock for `clear`). Every method copes with the tier being down or slow:
 * it answers within the tier's timeout, counts and logs the failure, and never throws but the documented errors.
 */
export interface SharedTier<V> {
  /** Whether a failed shared write fails the call (`CACHE_TIER_UNAVAILABLE`, nothing written locally) or is only counted. */
  readonly strict: boolean;
  /**
   * The largest value the tier holds (larger ones stay local, their shared copy deleted): a value committed from a file
   * is read back for the tier only up to it. Absent: no limit.
   */
  readonly maxValueBytes?: number;
  /** The sharing of the scope's top-level scope; synchronous and cheap (it runs on every read's miss). */
  sharing(scope: Scope): ScopeSharing;
  /**
   * Whether the item's local copy may be served as a hit: its scope is known to be in sync with the tier (its change
   * log caught up since the tier was last reached), or the tier cannot be reached (the local tier serves alone then),
   * or the item's own change waits to be written through. Else a hit is read through the tier, and served locally only
   * if the tier cannot answer. Synchronous and cheap: it runs on every local hit in a shared scope. Absent: always.
   */
  inSync?(scope: Scope, id: string): boolean;
  /**
   * Whether the item's local record is a change still to be written through (as an item of its own, or as one of a
   * scope whose whole pass is to come): eviction skips it, as a write-back cache keeps a dirty entry until it is
   * written, while such items hold at most half of the size limit. Synchronous and cheap: eviction asks it of every
   * item it would remove. Absent: never.
   */
  waitsToWrite?(itemKey: string): boolean;
  /**
   * Hears that an item for which {@link SharedTier.waitsToWrite} held was evicted all the same (such items held more
   * than eviction lets them keep): counted and logged. Absent: nothing is told.
   */
  evictedBeforeWrite?(itemKey: string): void;
  /** Reads the shared copy; `null` when the tier is unavailable (a shared miss, counted). */
  read(scope: Scope, id: string): Promise<TierRead<V> | null>;
  /**
   * Writes the item to the tier and logs the change for other machines. With `lease`, the write is fenced: refused
   * with `CACHE_LEASE_LOST` when the lease was lost or a newer grant, write or clear came since. A value over the
   * tier's size limit is not written: the shared copy is deleted instead, so that no machine reads an older value.
   * @throws CacheError `CACHE_LEASE_LOST`; `CACHE_TIER_UNAVAILABLE` only when `strict`.
   */
  write(scope: Scope, id: string, record: StoredRecord<V>, options: { lease?: TierLease; sizeBytes: number }): Promise<void>;
  /** Deletes the shared copy and logs the change. @throws CacheError `CACHE_TIER_UNAVAILABLE` only when `strict`. */
  delete(scope: Scope, id: string): Promise<void>;
  /** Clears the scope's shared copies without scanning the keyspace, and logs it. @throws as {@link SharedTier.delete}. */
  clear(scope: Scope): Promise<void>;
  /**
   * Takes the item's lease, waiting while another machine holds it (woken when it releases, or when its lease runs
   * out), unless `wait` is false; `'busy'` then. `null` when the tier is unavailable: the caller goes on with its local
   * lock alone, and the tier counts a local fallback.
   * @throws the signal's reason when it aborts the wait.
   */
  acquire(scope: Scope, id: string, options: { wait: boolean; signal?: AbortSignal | undefined }): Promise<TierGrant<V> | 'busy' | null>;
  /** Releases the lease (waking other machines' waiters) and stops renewing it; never throws. */
  release(lease: TierLease): Promise<void>;
  /** Connects the tier to the local store, whose copies it drops; called once, before any other call. */
  attach(sink: TierSink<V>): Promise<void>;
  status(): TierStatus;
  close(): Promise<void>;
}
