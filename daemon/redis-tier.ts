import { randomUUID } from 'node:crypto';
import { join } from 'node:path';
import { CacheError, isCacheError } from '../src/errors.js';
import { itemKey, parseItemKey, ROOT_SCOPE, type Scope, scopeOf, topScopeName } from '../src/scope-path.js';
import type { ScopeSharing, SharedTier, TierGrant, TierLease, TierRead, TierSink, TierStatus } from '../src/shared-tier.js';
import { PerKindLog } from '../src/per-kind-log.js';
import type { EncodedValue, StoredRecord } from '../src/store.js';
import { ChangeLog } from './change-log.js';
import { PendingChanges, type PendingTop } from './pending-changes.js';
import { NodeDown, type TierClient, TierConnection, TierUnavailable } from './tier-connection.js';
import { readTierIdentity } from './tier-identity.js';
import { encodeTopName, generationFields, TierKeys, topOf } from './tier-keys.js';
import type { TierOptions } from './tier-options.js';
import { ACQUIRE_SCRIPT, CLEAR_SCRIPT, RELEASE_SCRIPT, RENEW_SCRIPT, SHARED_ITEM_MAX_LIFE_MS, TIER_SCRIPTS, WRITE_SCRIPT } from './tier-scripts.js';

/** How long a shared copy without an expiry stays in Redis after its last write, so that a `volatile-*` policy may evict it. */
export const SHARED_ITEM_TTL_MS = SHARED_ITEM_MAX_LIFE_MS;
/** A tombstone outlives every lease granted before it by at least this much (and lives at least a minute). */
const MIN_TOMBSTONE_TTL_MS = 60_000;
/** A waiter for another machine's lease tries again this long after the lease's time runs out, if no release woke it. */
const WAIT_MARGIN_MS = 20;
/**
 * The longest a waiter for another machine's lease sleeps before asking again: a release message wakes it sooner, and a
 * Redis that stopped answering is found by that next ask (the tier degrades and the getset falls back to its local lock).
 */
export const MAX_WAIT_SLICE_MS = 1000;
/** Acquires whose reply never came (timed out or failed) remembered at most, to release once Redis answers again. */
const MAX_ORPHANS = 1000;
/** How long after a release pass that left orphans while the tier is up the next one runs. */
const ORPHAN_RETRY_MS = 1000;
/** Scopes cleared at once when the root scope is cleared (each its own script call). */
const CLEAR_CONCURRENCY = 32;
/** How soon changes Redis did not take are written through again, while some wait and the tier is up. */
export const REPLAY_RETRY_MS = 1000;
export interface RedisTierOptions extends TierOptions {
  /**
   * The daemon's data directory: where the change log keeps its positions (`tier-positions.json`), and the tier the
   * changes Redis did not take yet (`tier-pending.json`).
   */
  dataDir: string;
  log(line: string): void;
  /** The longest a waiter sleeps between asks, if no release wakes it ({@link MAX_WAIT_SLICE_MS} unless given; for tests). */
  maxWaitSliceMs?: number | undefined;
}

/** A lease this daemon holds in Redis, renewed every third of its time until released or found lost. */
class RedisLease implements TierLease {
  readonly fence: number;
  readonly top: string;
  readonly itemKey: string;
  readonly token: string;
  /** The item's generation fields: a renewal checks that no clear came since the grant. */
  readonly fields: readonly string[];
  /** The tier's identity when it was granted: its fence means nothing to a Redis of another identity. */
  readonly identity: string | null;
  #held = true;
  timer: NodeJS.Timeout | undefined;
  /** When the lease runs out by this daemon's clock, unless renewed: past it, it is lost whatever Redis says. */
  expiresAtMs: number;

  constructor(fields: { fence: number; top: string; itemKey: string; token: string; expiresAtMs: number; fields: readonly string[]; identity: string | null }) {
    this.fence = fields.fence;
    this.identity = fields.identity;
    this.fields = fields.fields;
    this.top = fields.top;
    this.itemKey = fields.itemKey;
    this.token = fields.token;
    this.expiresAtMs = fields.expiresAtMs;
  }

  get held(): boolean {
    if (this.#held && performance.now() >= this.expiresAtMs) this.lose();
    return this.#held;
  }

  lose(): void {
    this.#held = false;
    clearInterval(this.timer);
    this.timer = undefined;
  }
}

/** The flat `field, value, ...` list of a hash, as Buffers, by field name. */
function hashFields(flat: readonly unknown[], from = 0): Map<string, Buffer> {
  const fields = new Map<string, Buffer>();
  for (let at = from; at + 1 < flat.length; at += 2) fields.set(String(flat[at]), flat[at + 1] as Buffer);
  return fields;
}

/** The fence of the newest clear from `HMGET g <fields>`: the largest value, missing ones as 0. */
function newestClearOf(values: readonly (Buffer | null)[]): number {
  let newest = 0;
  for (const value of values) if (value !== null) newest = Math.max(newest, Number(value.toString()));
  return newest;
}

/**
 * The record an item's hash holds, if it is a live copy written after the newest clear of its scopes (`clearedAt`, a
 * fence); `undefined` for no item, a tombstone, or a copy written before a clear.
 */
function recordOf(fields: ReadonlyMap<string, Buffer>, clearedAt: number): StoredRecord<EncodedValue> | undefined {
  const bytes = fields.get('v');
  if (fields.size === 0 || fields.has('d') || bytes === undefined) return undefined;
  if (!(Number(fields.get('f')?.toString()) > clearedAt)) return undefined;
  const modified = Number(fields.get('m')?.toString());
  const encoding = fields.get('e')?.toString();
  if (!Number.isFinite(modified) || encoding === undefined) return undefined;
  const expiresAt = fields.get('x');
  const staleUntil = fields.get('s');
  return {
    modified,
    // A copy: the reply's Buffer may be a view of a larger socket chunk, which the local copy should not keep alive.
    value: { encoding, bytes: new Uint8Array(bytes) },
    ...(expiresAt === undefined ? {} : { expiresAtMs: Number(expiresAt.toString()) }),
    ...(staleUntil === undefined ? {} : { staleUntilMs: Number(staleUntil.toString()) }),
  };
}

function asBuffer(bytes: Uint8Array): Buffer {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

const NOT_COPYABLE = () => false;

/**
 * The shared tier on Redis (or Valkey, or a Redis Cluster): items as hashes under their top-level scope's hash tag,
 * writes and leases checked and logged by Lua scripts, reads by one pipelined round trip, and a {@link ChangeLog} that
 * keeps local copies true. Every call answers within the connection's timeout; while Redis is unavailable, reads
 * are misses, writes are counted failures (`CACHE_TIER_UNAVAILABLE` when `strict`), and leases are `null`.
 */
export class RedisTier implements SharedTier<EncodedValue> {
  readonly strict: boolean;
  readonly #options: RedisTierOptions;
  /** The sharing of each named top-level scope, as a Map: asked on every local hit, where a lookup in the options' null-prototype object took about 20 ns. */
  readonly #namedSharing: ReadonlyMap<string, ScopeSharing>;
  /** The sharing of every top-level scope not named. */
  readonly #otherSharing: ScopeSharing;
  get maxValueBytes(): number {
    return this.#options.maxValueBytes;
  }
  readonly #connection: TierConnection;
  readonly #keys: TierKeys;
  /** This daemon run's id: its leases' tokens begin with it, and the change log skips its own entries by it. */
  readonly #origin = randomUUID();
  readonly #tombstoneTtlMs: number;
  #changeLog: ChangeLog | undefined;
  #sink: TierSink<EncodedValue> | undefined;
  readonly #pending: PendingChanges;
  /** The top-level scope being written through now, and what is left of it. */
  #replayingNow: PendingTop | undefined;
  #rootClearReplaying = false;
  /** Write-throughs run one at a time, in this chain. */
  #replayChain: Promise<void> = Promise.resolve();
  #replayTimer: NodeJS.Timeout | undefined;
  /**
   * Exclusive requests queued for items whose lock a pass found held, by item key (one per key): once granted, the
   * item is written through under it. Aborted when its change is forgotten, and at close.
   */
  readonly #queued = new Map<string, { top: string; abort: AbortController; done: Promise<void> }>();
  /** Failures that repeat (a full disk, an ACL that refuses every write), logged a line a minute at most for each kind. */
  readonly #failures: PerKindLog;
  #closed = false;
  /**
   * The tier's identity as checked since the connection last came up (`null`: unreadable, an ACL); `undefined` until
   * then: fenced sends and acquires wait for the check, so that no fence of a Redis that lost its data is sent.
   */
  #identity: string | null | undefined;
  #identityCheck: Promise<void> | undefined;
  /** Bumped each time the connection goes down: a check begun before tells nothing of the Redis after. */
  #connectionEpoch = 0;
  /** Lease tokens made in this run: `<origin>:<count>`. */
  #tokens = 0;
  #leasesGranted = 0;
  /** Leases held now, released at close. */
  readonly #leases = new Set<RedisLease>();
  /** Waiters for another machine's lease, by item key: woken by its release. */
  readonly #waiters = new Map<string, Set<() => void>>();
  /**
   * Tokens of acquires whose reply never came, by token: Redis may have granted them anyway, leaving a lease nobody
   * renews; each is released (by token) once the tier answers again. The oldest go beyond {@link MAX_ORPHANS}.
   */
  readonly #orphans = new Map<string, { top: string; itemKey: string }>();
  /** The release pass of orphans under way, whether another was asked for meanwhile, and the timer of the next try. */
  #orphanPass: Promise<void> | undefined;
  #orphanPassAgain = false;
  #orphanTimer: NodeJS.Timeout | undefined;
  /** Top-level scopes added to `<prefix>:scopes` in this run. */
  readonly #namedTops = new Set<string>();
  #sharedHits = 0;
  #sharedMisses = 0;
  #sharedWrites = 0;
  #fencedWrites = 0;
  #localFallbacks = 0;
  #evictedBeforeWrite = 0;

  constructor(options: RedisTierOptions) {
    this.#options = options;
    this.#failures = new PerKindLog((line) => options.log(line));
    this.strict = options.strict;
    this.#namedSharing = new Map(Object.entries(options.sharing).filter(([name]) => name !== '*'));
    this.#otherSharing = options.sharing['*'] ?? 'local';
    this.#keys = new TierKeys(options.keyPrefix);
    this.#tombstoneTtlMs = Math.max(2 * options.leaseMs, MIN_TOMBSTONE_TTL_MS);
    this.#pending = new PendingChanges({
      path: join(options.dataDir, 'tier-pending.json'),
      keyPrefix: options.keyPrefix,
      ...(options.maxPendingChanges === undefined ? {} : { maxChanges: options.maxPendingChanges }),
      log: options.log,
    });
    this.#connection = new TierConnection({
      urls: options.urls,
      cluster: options.cluster,
      username: options.username,
      password: options.password,
      timeoutMs: options.timeoutMs,
      // Only a daemon that writes runs scripts: a `shared-read` one sends Redis nothing of them.
      scripts: Object.values(options.sharing).includes('shared') ? TIER_SCRIPTS : [],
      ca: options.ca,
      log: options.log,
    });
  }

  sharing(scope: Scope): ScopeSharing {
    return this.#sharingOf(topOf(scope));
  }

  inSync(scope: Scope, id: string): boolean {
    const top = topOf(scope);
    return this.#sharingOf(top) === 'local' || this.#changeLog === undefined || this.#changeLog.inSync(scope, id);
  }

  async attach(sink: TierSink<EncodedValue>): Promise<void> {
    if (this.#changeLog !== undefined) throw new TypeError('The tier is attached already.');
    this.#sink = sink;
    await this.#pending.load();
    this.#changeLog = new ChangeLog({
      connection: this.#connection,
      keys: this.#keys,
      origin: this.#origin,
      sink,
      sharing: (top) => this.#sharingOf(top),
      positionsPath: join(this.#options.dataDir, 'tier-positions.json'),
      log: this.#options.log,
      onReleased: (key) => this.#wake(key),
      replay: (top) => (top === undefined ? this.#replayAll() : this.#replayTop(top)),
      isPending: (top, key) => this.#pending.holds(top, key),
    });
    // A getset waiting for another machine's lease falls back to the local lock as soon as the tier goes down, rather
    // than at the end of the holder's lease.
    this.#connection.onStateChange((up) => {
      // Redis may have restarted without its data meanwhile: its identity is checked again before any fence is sent.
      this.#connectionEpoch++;
      this.#identity = undefined;
      if (!up) for (const waiters of this.#waiters.values()) for (const wake of [...waiters]) wake();
      else {
        void this.#checkedIdentity().catch(() => {});
        void this.#releaseOrphans();
        this.#replayLater(0);
      }
    });
    await this.#connection.open();
    await this.#changeLog.start();
    this.#replayLater(0);
  }

  waitsToWrite(key: string): boolean {
    // A whole scope's items all wait: its pass clears the scope in Redis, then writes what is still local.
    return this.#pending.holds(topScopeName(key), key);
  }

  evictedBeforeWrite(key: string): void {
    this.#evictedBeforeWrite++;
    // One line a minute at most: a full cache evicts many.
    this.#failures.log(
      'evicted',
      `tier: an item whose change waits to be written through was evicted, Redis will not have its value (${JSON.stringify(key)}): ` +
        'the other items could not bring the store down to its target',
    );
  }

  async read(scope: Scope, id: string): Promise<TierRead<EncodedValue> | null> {
    const changeLog = this.#attached();
    const top = topOf(scope);
    const key = itemKey(scope, id);
    // This daemon's own change of the item waits to be written through (a delete, or a clear, leaves no local record):
    // the local store is the newest, and Redis's older copy is neither served nor kept, nor then written back.
    if (this.#ownChangeWaits(top, key)) {
      this.#sharedMisses++;
      return { record: undefined, copyable: NOT_COPYABLE };
    }
    if (!this.#connection.up) {
      this.#sharedMisses++;
      return null;
    }
    const item = this.#keys.item(key);
    changeLog.track(top);
    const watch = changeLog.beginRead(scope, id);
    let replies: unknown[];
    try {
      replies = await this.#connection.run('read', (client) =>
        client.pipeline(item, [['HGETALL', item], ['HMGET', this.#keys.generations(top), ...generationFields(scope)]], { buffers: true }),
      );
    } catch (error) {
      watch.end();
      if (!(error instanceof TierUnavailable)) throw error;
      this.#sharedMisses++;
      return null;
    }
    const record = recordOf(hashFields(replies[0] as unknown[]), newestClearOf(replies[1] as (Buffer | null)[]));
    if (record === undefined) {
      watch.end();
      this.#sharedMisses++;
      return { record: undefined, copyable: NOT_COPYABLE };
    }
    this.#sharedHits++;
    return { record, copyable: askedOnce(watch) };
  }

  async write(scope: Scope, id: string, record: StoredRecord<EncodedValue>, options: { lease?: TierLease; sizeBytes: number }): Promise<void> {
    const lease = options.lease === undefined ? undefined : this.#own(options.lease);
    if (lease !== undefined && !lease.held) {
      this.#fencedWrites++;
      throw new CacheError('CACHE_LEASE_LOST', 'The lease on the item was lost before the write: another machine may have written it since.');
    }
    // Too large to share: the shared copy is deleted instead, so that no machine reads an older value.
    if (options.sizeBytes > this.#options.maxValueBytes) return this.#change(scope, id, undefined, lease);
    return this.#change(scope, id, record, lease);
  }

  async delete(scope: Scope, id: string): Promise<void> {
    return this.#change(scope, id, undefined, undefined);
  }

  async clear(scope: Scope): Promise<void> {
    this.#attached();
    if (scope.path.length > 0) {
      this.#checkShared(topOf(scope));
      return this.#clearIn(topOf(scope), scope.prefix, scope.path.length === 1);
    }
    // The root scope: every top-level scope written to (as the tier's set of names says) or named here, that this
    // daemon shares, each cleared by its own script on its root generation field.
    let shared: string[];
    try {
      shared = await this.#sharedTops();
    } catch (error) {
      if (this.#remembers(error)) {
        this.#pending.addRootClear();
        await this.#keep(true);
      }
      return this.#failed('clear', error);
    }
    for (let at = 0; at < shared.length; at += CLEAR_CONCURRENCY) {
      await Promise.all(shared.slice(at, at + CLEAR_CONCURRENCY).map((top) => this.#clearIn(top, '', true)));
    }
  }

  async acquire(scope: Scope, id: string, options: { wait: boolean; signal?: AbortSignal | undefined }): Promise<TierGrant<EncodedValue> | 'busy' | null> {
    const changeLog = this.#attached();
    const top = topOf(scope);
    this.#checkShared(top);
    const key = itemKey(scope, id);
    const item = this.#keys.item(key);
    const fields = generationFields(scope);
    for (;;) {
      options.signal?.throwIfAborted();
      if (this.#closed || !this.#connection.up) {
        this.#localFallbacks++;
        return null;
      }
      let identity: string | null;
      try {
        identity = await this.#checkedIdentity();
      } catch (error) {
        if (!(error instanceof TierUnavailable)) throw error;
        this.#localFallbacks++;
        return null;
      }
      changeLog.track(top);
      const watch = changeLog.beginRead(scope, id);
      const token = `${this.#origin}:${++this.#tokens}`;
      let reply: unknown[];
      const startedMs = performance.now();
      try {
        reply = await this.#connection.run('acquire', (client) =>
          client.script<unknown[]>(
            ACQUIRE_SCRIPT,
            [item, this.#keys.fenceCounter(top), this.#keys.generations(top), this.#keys.leases(top), this.#keys.leaseExpiries(top)],
            [key, token, String(this.#options.leaseMs), String(fields.length), ...fields, this.#origin],
            { buffers: true },
          ),
        );
      } catch (error) {
        watch.end();
        if (!(error instanceof TierUnavailable)) throw error;
        // Refused (an ACL): Redis ran nothing. Else it may have granted the lease after all.
        if (!error.refused) this.#orphan(token, top, key);
        this.#localFallbacks++;
        return null;
      }
      if (Number(reply[0]) === 1) {
        const lease = new RedisLease({ fence: Number(reply[1]), top, itemKey: key, token, expiresAtMs: startedMs + this.#options.leaseMs, fields, identity });
        this.#hold(lease);
        // As a read: an own change of the item that waits makes Redis's copy older than the local store's miss.
        const record = this.#ownChangeWaits(top, key) ? undefined : recordOf(hashFields(reply, 3), Number(reply[2]));
        // The grant reads the shared copy as a read does, and counts as one.
        if (record === undefined) {
          watch.end();
          this.#sharedMisses++;
        } else {
          this.#sharedHits++;
        }
        return { lease, record, copyable: record === undefined ? NOT_COPYABLE : askedOnce(watch) };
      }
      watch.end();
      if (!options.wait) return 'busy';
      const woken = await this.#waitFor(key, Math.min(Number(reply[1]) + WAIT_MARGIN_MS, this.#options.maxWaitSliceMs ?? MAX_WAIT_SLICE_MS), options.signal);
      if (!woken) {
        this.#localFallbacks++;
        return null;
      }
    }
  }

  async release(lease: TierLease): Promise<void> {
    const held = this.#own(lease);
    const wasHeld = this.#leases.delete(held);
    held.lose();
    if (!wasHeld || !this.#connection.up) return;
    try {
      await this.#connection.run('release', (client) =>
        client.script(RELEASE_SCRIPT, [this.#keys.leases(held.top), this.#keys.leaseExpiries(held.top)], [held.itemKey, held.token, String(held.fence), this.#keys.channel, encodeTopName(held.top)]),
      );
    } catch (error) {
      // Counted and logged by the connection; the lease runs out by itself.
      if (!(error instanceof TierUnavailable)) throw error;
    }
  }

  /** How many `acquire` calls wait now for another machine's lease (at most one per item: the local lock is held). */
  waiting(): number {
    let count = 0;
    for (const waiters of this.#waiters.values()) count += waiters.size;
    return count;
  }

  /**
   * How many acquires whose reply never came wait to have their lease released: only these are tried again (every
   * {@link ORPHAN_RETRY_MS} while the tier is up); one given up is no longer counted.
   */
  orphans(): number {
    return this.#orphans.size;
  }

  status(): TierStatus {
    const figures = this.#connection.figures();
    const changes = this.#changeLog?.figures() ?? { invalidations: 0, droppedScopes: 0 };
    return {
      state: figures.state,
      url: this.#connection.url,
      lastError: figures.lastError,
      downNodes: figures.downNodes,
      latencyP50Ms: figures.latencyP50Ms,
      latencyP99Ms: figures.latencyP99Ms,
      sharedHits: this.#sharedHits,
      sharedMisses: this.#sharedMisses,
      sharedWrites: this.#sharedWrites,
      errors: figures.errors,
      refused: figures.refused,
      leases: this.#leasesGranted,
      fencedWrites: this.#fencedWrites,
      localFallbacks: this.#localFallbacks,
      invalidations: changes.invalidations,
      droppedScopes: changes.droppedScopes,
      pendingChanges: this.#pending.size,
      evictedBeforeWriteThrough: this.#evictedBeforeWrite,
      sharing: this.#sharingShown(),
    };
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    clearTimeout(this.#replayTimer);
    clearTimeout(this.#orphanTimer);
    // Waiters give up (acquire returns null), and leases still held are released, best effort.
    for (const waiters of this.#waiters.values()) for (const wake of waiters) wake();
    for (const queued of this.#queued.values()) queued.abort.abort(new CacheError('CACHE_CLOSED', 'The shared tier is closed.'));
    await Promise.all([...this.#leases].map((lease) => this.release(lease)));
    await this.#changeLog?.close();
    await this.#connection.close();
    // A write-through under way fails now; what it left is in the file already (it is rewritten only after a success).
    await Promise.all([this.#replayChain, ...[...this.#queued.values()].map((queued) => queued.done)]);
  }

  /** Whether this daemon's own change of the item (its own, or a clear of a scope holding it) waits to be written through. */
  #ownChangeWaits(top: string, key: string): boolean {
    return this.#pending.holds(top, key) || this.#pending.covers(top, key);
  }

  #attached(): ChangeLog {
    if (this.#changeLog === undefined) throw new TypeError('The tier is used before attach().');
    return this.#changeLog;
  }

  #sharingOf(top: string): ScopeSharing {
    return (top === '' ? undefined : this.#namedSharing.get(top)) ?? this.#otherSharing;
  }

  /** The sharing as status shows it: `*` and every name whose sharing is not `local`, or differs from `*`'s. */
  #sharingShown(): Record<string, ScopeSharing> {
    const shown: Record<string, ScopeSharing> = Object.create(null) as Record<string, ScopeSharing>;
    const fallback = this.#options.sharing['*'] ?? 'local';
    for (const [name, sharing] of Object.entries(this.#options.sharing)) {
      if (sharing !== 'local' || (name !== '*' && fallback !== 'local')) shown[name] = sharing;
    }
    return shown;
  }

  #checkShared(top: string): void {
    if (this.#sharingOf(top) !== 'shared') throw new TypeError(`The tier writes only in shared scopes: ${JSON.stringify(top)} is ${this.#sharingOf(top)}.`);
  }

  #own(lease: TierLease): RedisLease {
    if (!(lease instanceof RedisLease)) throw new TypeError('Not a lease of this tier.');
    return lease;
  }

  /**
   * Writes an item's shared copy (`record`) or its tombstone (no record), fenced by `lease` if given, and logs the
   * change; a change Redis did not take is kept to be written through later (unless strict), fenced by the lease's
   * number if it had one.
   * @throws CacheError `CACHE_LEASE_LOST` when Redis refused the lease; `CACHE_TIER_UNAVAILABLE` only when strict.
   */
  async #change(scope: Scope, id: string, record: StoredRecord<EncodedValue> | undefined, lease: RedisLease | undefined): Promise<void> {
    const top = topOf(scope);
    const key = itemKey(scope, id);
    let refused: string | null;
    try {
      refused = await this.#send(scope, id, record, lease ?? 'plain');
    } catch (error) {
      if (this.#remembers(error)) await this.#keep(this.#pending.addKey(top, key, this.#replayFence(top, key, lease)));
      return this.#failed(record === undefined ? 'delete' : 'write', error);
    }
    if (refused !== null) {
      throw new CacheError('CACHE_LEASE_LOST', `The shared tier refused the write: ${refused}; another machine has written the item or taken its lease since.`);
    }
    // A clear still to be written through would undo this write in Redis: it is written again after that clear. Else
    // an earlier change of the item that waits is done: Redis holds this newer one, and another machine's later
    // change must be applied here, not skipped for a change waiting, nor undone by its write-through.
    if (this.#pending.covers(top, key)) await this.#keep(this.#pending.addKey(top, key, undefined));
    else if (this.#pending.forgetKey(top, key)) await this.#keep(true);
  }

  /**
   * The fence a change Redis did not take is written through with: its lease's, so that it never undoes a newer
   * lease's write, unless a clear still to be written through covers it: that clear goes first with a newer fence, and
   * would refuse it (the write was made after the clear, so plain is right).
   */
  #replayFence(top: string, key: string, lease: RedisLease | undefined): number | undefined {
    if (lease === undefined || this.#pending.covers(top, key)) return undefined;
    // Granted by a Redis that has lost its data since: as every fence saved then, `0` (see PendingChanges.checkIdentity).
    const { identity } = this.#pending;
    return typeof lease.identity === 'string' && typeof identity === 'string' && lease.identity !== identity ? 0 : lease.fence;
  }

  /**
   * The tier's identity, checked once since the connection last came up (a check under way is shared): when it is
   * not the one the saved fences were taken against, they are reset first (PendingChanges.checkIdentity), logged and
   * saved. While the Cluster node holding it is marked down, the identity known before stands, and each call reads it
   * again: the fences saved or granted meanwhile go to the other nodes, whose write script checks them against their
   * scope's own counter (the identity, on one node, tells nothing of the others' data), and a lease's identity is kept
   * with it, so that it goes as `0` should the check find another identity later.
   * @throws TierUnavailable when Redis does not answer, or its node is down with no identity known before.
   */
  async #checkedIdentity(): Promise<string | null> {
    for (;;) {
      if (this.#identity !== undefined) return this.#identity;
      if (this.#closed) throw new TierUnavailable('the tier is closed');
      const epoch = this.#connectionEpoch;
      const check = (this.#identityCheck ??= this.#checkIdentity(epoch).finally(() => {
        if (this.#identityCheck === check) this.#identityCheck = undefined;
      }));
      try {
        await check;
      } catch (error) {
        const known = this.#pending.identity;
        if (error instanceof NodeDown && known !== undefined) return known;
        throw error;
      }
    }
  }

  /** Whether the saved fences were reset since they were relative to `identity` (a check found another one since). */
  #lostSince(identity: string | null | undefined): boolean {
    const now = this.#pending.identity;
    return typeof identity === 'string' && typeof now === 'string' && now !== identity;
  }

  async #checkIdentity(epoch: number): Promise<void> {
    const current = await readTierIdentity(this.#connection, this.#keys);
    // The connection went down meanwhile: the answer may be the Redis's of before; #checkedIdentity asks again.
    if (epoch !== this.#connectionEpoch || this.#closed) return;
    const before = this.#pending.identity;
    const changed = this.#pending.checkIdentity(current);
    this.#identity = current;
    if (typeof before === 'string' && typeof current === 'string' && before !== current) {
      this.#options.log(
        `tier: the tier's identity is ${JSON.stringify(current)}, not ${JSON.stringify(before)} as when the waiting changes' fences were taken ` +
          '(Redis lost its data, or is another one): they are written through fenced by 0, refused where Redis holds a newer change',
      );
    }
    if (changed) await this.#keep(true);
  }

  /**
   * {@link RedisTier.#change} without the failure policy, fenced by a lease, by a fencing number alone (the
   * write-through of a lease's write), or plain; resolves to `null` when written, else to why Redis refused it (a
   * newer write, grant or clear came since), counted as a fenced write.
   * @throws TierUnavailable when Redis did not take it.
   */
  async #send(scope: Scope, id: string, record: StoredRecord<EncodedValue> | undefined, fencedBy: RedisLease | number | 'plain'): Promise<string | null> {
    if (typeof fencedBy === 'number') {
      // A saved fence (the write-through of a lease's write, or a whole scope's clear) goes only once the tier's
      // identity is checked; reset meanwhile, it is `0` now, as every one saved.
      const identity = this.#pending.identity;
      await this.#checkedIdentity();
      if (this.#lostSince(identity)) fencedBy = 0;
    }
    const lease = fencedBy instanceof RedisLease ? fencedBy : undefined;
    const changeLog = this.#attached();
    const top = topOf(scope);
    this.#checkShared(top);
    const key = itemKey(scope, id);
    const fields = generationFields(scope);
    const item = this.#keys.item(key);
    const what = record === undefined ? 'delete' : 'write';
    const args: (string | Buffer)[] = [
      this.#origin,
      key,
      this.#keys.channel,
      encodeTopName(top),
      String(this.#options.maxLogEntries),
      record === undefined ? 'd' : 's',
      lease?.token ?? '',
      fencedBy === 'plain' ? '' : String(fencedBy instanceof RedisLease ? fencedBy.fence : fencedBy),
      String(fields.length),
      ...fields,
    ];
    if (record === undefined) {
      args.push(String(this.#tombstoneTtlMs));
    } else {
      const expireAtMs = record.staleUntilMs ?? record.expiresAtMs ?? Date.now() + SHARED_ITEM_TTL_MS;
      args.push(
        asBuffer(record.value.bytes),
        record.value.encoding,
        String(record.modified),
        record.expiresAtMs === undefined ? '' : String(record.expiresAtMs),
        record.staleUntilMs === undefined ? '' : String(record.staleUntilMs),
        String(Math.ceil(expireAtMs)),
      );
    }
    // Tracked even when the tier is down: the local write made now must be checked against the log once it is known.
    changeLog.track(top);
    if (!this.#connection.up) throw new TierUnavailable(`the tier is degraded: ${this.#connection.figures().lastError ?? ''}`);
    const reply = await this.#connection.run(what, async (client) => {
      await this.#nameTop(client, top);
      return client.script<unknown[]>(
        WRITE_SCRIPT,
        [item, this.#keys.fenceCounter(top), this.#keys.generations(top), this.#keys.leases(top), this.#keys.changeLog(top), this.#keys.leaseExpiries(top)],
        args,
      );
    });
    if (Number(reply[0]) !== 1) {
      this.#fencedWrites++;
      lease?.lose();
      return String(reply[1]);
    }
    this.#sharedWrites++;
    return null;
  }

  /**
   * Clears the scope of `prefix` in `top` in Redis, `whole` when that is all of `top` (the prefix `''` or the top-level
   * scope's own); one Redis did not take is kept for later.
   */
  async #clearIn(top: string, prefix: string, whole: boolean): Promise<void> {
    try {
      await this.#sendClear(top, prefix, whole);
    } catch (error) {
      if (this.#remembers(error)) await this.#keep(this.#pending.addClear(top, prefix));
      return this.#failed('clear', error);
    }
    // What waited under it is gone locally, and now in Redis too.
    if (this.#waitsFor(top)) {
      this.#pending.settled(top, prefix);
      this.#pruneQueued();
    }
  }

  /**
   * Queues an exclusive request for a held item whose change waits as a key (at most one per key), without waiting
   * for it: readers asking after it wait behind it, so that an item whose readers overlap without pause comes free.
   * Once granted, the item is written through under that lock ({@link RedisTier.#sendQueued}).
   */
  #queueReplay(top: string, key: string): void {
    if (this.#closed || this.#queued.has(key)) return;
    const { scope, id } = parseItemKey(key);
    const entry = { top, abort: new AbortController(), done: Promise.resolve() };
    this.#queued.set(key, entry);
    entry.done = this.#sink!.replayQueued(scope, id, (record) => this.#sendQueued(top, key, scope, id, record), { signal: entry.abort.signal })
      .then(
        () => {},
        (error: unknown) => {
          // Damaged data is given up as a pass gives it up; another local failure waits for the next pass.
          if (this.#givesUp(error, key) && this.#pending.forgetKey(top, key)) return this.#keep(true);
        },
      )
      .finally(() => {
        if (this.#queued.get(key) === entry) this.#queued.delete(key);
      });
  }

  /**
   * Writes through a held item once its queued request is granted, under its lock, as a pass would send it; sends
   * nothing when it no longer waits as a key, or its scope's pass has to come first (a clear still to be written
   * through covers it, or its scope is remembered whole): the pass does it then. Resolves false when Redis refused it
   * for a newer write (the sink drops the local copy).
   */
  async #sendQueued(top: string, key: string, scope: Scope, id: string, record: StoredRecord<EncodedValue> | undefined): Promise<boolean> {
    const fence = this.#pending.keyFence(top, key);
    if (fence === undefined || this.#closed || !this.#connection.up || this.#sharingOf(top) !== 'shared') return true;
    let written: boolean;
    try {
      written = (await this.#send(scope, id, record !== undefined && record.value.bytes.byteLength > this.#options.maxValueBytes ? undefined : record, fence)) === null;
    } catch (error) {
      // Not taken: it waits for the next pass, which queues a request again if the item is held then.
      if (!this.#givesUp(error, key)) return true;
      written = true;
    }
    if (this.#pending.forgetKey(top, key)) await this.#keep(true);
    return written;
  }

  /** Aborts the queued requests of items whose change no longer waits as a key (written, forgotten, or cleared since). */
  #pruneQueued(): void {
    for (const [key, queued] of this.#queued) if (!this.#pending.waitsAsKey(queued.top, key)) queued.abort.abort(new Error('The change no longer waits.'));
  }

  /**
   * Resolves to the fence the clear stands at in Redis.
   * @throws TierUnavailable when Redis did not take the clear.
   */
  async #sendClear(top: string, prefix: string, whole: boolean): Promise<number> {
    this.#attached().track(top);
    const reply = await this.#connection.run('clear', async (client) => {
      await this.#nameTop(client, top);
      return client.script<unknown[]>(
        CLEAR_SCRIPT,
        [this.#keys.fenceCounter(top), this.#keys.generations(top), this.#keys.clearTimes(top), this.#keys.changeLog(top)],
        [this.#origin, prefix, this.#keys.channel, encodeTopName(top), String(this.#options.maxLogEntries), whole ? '1' : '0'],
      );
    });
    this.#sharedWrites++;
    return Number(reply[0]);
  }

  /**
   * The top-level scopes a clear of the root scope clears: each this daemon shares that was ever written to the tier
   * (as the tier's set of names says) or that its `--share` names.
   * @throws TierUnavailable when Redis does not answer.
   */
  async #sharedTops(): Promise<string[]> {
    const written = await this.#connection.run('clear', (client) => client.send<string[]>(this.#keys.scopeNames, ['SMEMBERS', this.#keys.scopeNames]));
    const tops = new Set<string>(['', ...written, ...Object.keys(this.#options.sharing).filter((name) => name !== '*')]);
    return [...tops].filter((top) => this.#sharingOf(top) === 'shared');
  }

  /** Whether a failed change is kept to be written through later: not when strict (the call fails), nor when Redis refused it (an ACL). */
  #remembers(error: unknown): boolean {
    return !this.strict && error instanceof TierUnavailable && !error.refused && !this.#closed;
  }

  /** Whether changes of the top-level scope wait to be written through, or are being written now. */
  #waitsFor(top: string): boolean {
    return this.#pending.has(top) || this.#replayingNow?.top === top || this.#rootClearReplaying;
  }

  /**
   * Writes the changes waiting to their file (or, when nothing `changed`, waits for the write under way), before the
   * change that failed is acknowledged; a failure is logged, and the change acknowledged anyway (a restart loses it).
   */
  async #keep(changed: boolean): Promise<void> {
    if (changed) this.#pruneQueued();
    this.#replayLater(REPLAY_RETRY_MS);
    try {
      await (changed ? this.#pending.save() : this.#pending.saved());
    } catch (error) {
      // One line a minute at most: a full disk fails every write.
      this.#failures.log('keep', `tier: the changes waiting for the tier could not be kept in the data directory, a restart would lose them: ${(error as Error).message}`);
    }
  }

  /** Writes the waiting changes through in `ms` (`0`: now, sooner than a timer already set), and again every {@link REPLAY_RETRY_MS} while some wait. */
  #replayLater(ms: number): void {
    if (ms === 0 && this.#replayTimer !== undefined) {
      clearTimeout(this.#replayTimer);
      this.#replayTimer = undefined;
    }
    if (this.#closed || this.#replayTimer !== undefined || this.#pending.size === 0) return;
    this.#replayTimer = setTimeout(() => {
      this.#replayTimer = undefined;
      const run = this.#connection.up ? this.#replayAll() : Promise.resolve();
      void run.catch(() => {}).then(() => this.#replayLater(REPLAY_RETRY_MS));
    }, ms);
    this.#replayTimer.unref();
  }

  /**
   * Writes through every change waiting: the clear of the root scope, then each top-level scope's.
   * @throws TierUnavailable when Redis did not take one (what is left waits).
   */
  #replayAll(): Promise<void> {
    if (this.#pending.size === 0) return Promise.resolve();
    return this.#inTurn(async () => {
      await this.#replayRootClear();
      // A scope whose changes could not be written through (its Cluster node down, its local store failing) waits;
      // the others' are written through.
      let failure: unknown;
      for (const top of this.#pending.tops()) {
        try {
          await this.#replayOf(top);
        } catch (error) {
          failure ??= error;
        }
      }
      if (failure !== undefined) throw failure;
    });
  }

  /** Writes through the changes waiting for one top-level scope (after a clear of the root scope, if one waits). */
  #replayTop(top: string): Promise<void> {
    // While another turn writes this scope's changes through, the pass waits for it: it would drop their local copies.
    if (!this.#waitsFor(top)) return Promise.resolve();
    return this.#inTurn(async () => {
      await this.#replayRootClear();
      await this.#replayOf(top);
    });
  }

  #inTurn(run: () => Promise<void>): Promise<void> {
    const turn = this.#replayChain.then(run);
    this.#replayChain = turn.catch(() => {});
    return turn;
  }

  async #replayRootClear(): Promise<void> {
    if (!this.#pending.takeRootClear()) return;
    this.#rootClearReplaying = true;
    try {
      let shared: string[] = [];
      try {
        shared = await this.#sharedTops();
      } catch (error) {
        if (!this.#givesUp(error, ROOT_SCOPE.prefix)) throw error;
      }
      for (const top of shared) {
        try {
          await this.#sendClear(top, '', true);
        } catch (error) {
          // Refused: given up for this scope, the others are still cleared (the local store was cleared already).
          if (!this.#givesUp(error, top === '' ? ROOT_SCOPE.prefix : scopeOf([top]).prefix)) throw error;
        }
      }
    } catch (error) {
      this.#pending.restore({ rootClear: true });
      throw error;
    } finally {
      this.#rootClearReplaying = false;
    }
    this.#pending.finish();
    await this.#keep(true);
  }

  /**
   * Writes through what waits for the top-level scope: its clears, then a whole one's clear and every local item, or
   * each item's current local record. The convergence rule: a plain write-through is the later one in Redis, so it
   * wins there; one of a lease's write is fenced by the lease's number, and when Redis holds a newer write, grant or
   * clear it is refused and the local copy, older than Redis's, is dropped. A whole scope's items go fenced by the
   * scope's clear (or their lease's fence, when newer), so that an item another machine wrote after that clear is not
   * overwritten by the older local copy. An item whose lock is held waits, with a request queued for its lock.
   */
  async #replayOf(top: string): Promise<void> {
    const sink = this.#sink!;
    if (this.#closed) return;
    const pending = this.#pending.take(top);
    if (pending === undefined) return;
    if (this.#sharingOf(top) !== 'shared') {
      this.#pending.finish();
      this.#options.log(`tier: scope ${JSON.stringify(top)} is no longer shared: its changes that Redis did not take are not written through`);
      return;
    }
    this.#replayingNow = pending;
    // Resolves to false when the local copy is to be dropped (the sink does it, under the item's lock): Redis refused
    // it for a newer write. A write-through given up keeps the local copy: it is this daemon's acknowledged value.
    const send = async (scope: Scope, id: string, record: StoredRecord<EncodedValue> | undefined, fencedBy: number | 'plain') => {
      try {
        return (await this.#send(scope, id, record !== undefined && record.value.bytes.byteLength > this.#options.maxValueBytes ? undefined : record, fencedBy)) === null;
      } catch (error) {
        if (!this.#givesUp(error, itemKey(scope, id))) throw error;
        return true;
      }
    };
    const topScope = top === '' ? ROOT_SCOPE : scopeOf([top]);
    // Whether anything was written through (else the file need not be written again).
    let progressed = false;
    try {
      // Cleared once: a retry does not clear again what other machines wrote since (its fence is kept in the file too).
      if (pending.whole && pending.clearedAt === undefined) {
        let clearedAt: number | 'lost' = 0;
        // Its fence is saved: taken against the identity checked first (a Redis that lost its data since makes it `'lost'`).
        await this.#checkedIdentity();
        const identity = this.#pending.identity;
        try {
          clearedAt = await this.#sendClear(top, '', true);
        } catch (error) {
          // Refused: the local items are still written through, plain (each refused one then dropped locally).
          if (!this.#givesUp(error, topScope.prefix)) throw error;
        }
        if (clearedAt !== 0 && this.#lostSince(identity)) clearedAt = 'lost';
        pending.clearedAt = clearedAt;
        await this.#keep(true);
      }
      for (const prefix of [...pending.clears]) {
        // A clear of a scope holding it that Redis took meanwhile forgot it (settled): nothing to send.
        if (!pending.clears.has(prefix)) continue;
        try {
          await this.#sendClear(top, prefix, prefix === '' || (top !== '' && prefix === scopeOf([top]).prefix));
        } catch (error) {
          if (!this.#givesUp(error, prefix)) throw error;
        }
        pending.clears.delete(prefix);
        progressed = true;
      }
      if (pending.whole) {
        // The items go fenced by the scope's clear, or by their own lease's fence when newer: Redis refuses each one
        // another machine wrote (or cleared, or took the lease of) after the clear, and the older local copy is
        // dropped. A key changed plainly since the clear goes plain (the later write wins, as any key's). The clear's
        // fence unknown (given up, or a file of an earlier build): plain, as those builds did. The clear went in a Redis
        // that lost its data since (`'lost'`): fenced by 0, refused where Redis holds any change of the item since.
        // Read at each item: the tier's identity checked during the pass may reset them.
        const clearedAt = pending.clearedAt ?? 0;
        if (typeof clearedAt === 'number' && clearedAt > 0) for (const [key, fence] of pending.fences) pending.fences.set(key, Math.max(fence, clearedAt));
        const fenceOf = (key: string): number | 'plain' => {
          const now = pending.clearedAt ?? 0;
          if (now === 0) return 'plain';
          return pending.fences.get(key) ?? (pending.keys.has(key) ? 'plain' : now === 'lost' ? 0 : now);
        };
        try {
          // Items whose lock is held wait as keys at once (with the fence they would have gone by), so that a write of
          // one that Redis takes during the pass forgets it (forgetKey), and nothing undoes that write.
          const waitAsKey = (scope: Scope, id: string) => {
            const key = itemKey(scope, id);
            const fence = fenceOf(key);
            pending.keys.add(key);
            if (fence === 'plain') pending.fences.delete(key);
            else pending.fences.set(key, fence);
            this.#queueReplay(top, key);
          };
          await sink.replayScope(
            topScope,
            async (scope, id, record) => {
              const key = itemKey(scope, id);
              const fence = fenceOf(key);
              // Gone locally: the clear made Redis's older copies misses already, and a delete would undo a newer write.
              const written = record === undefined && fence !== 'plain' ? true : await send(scope, id, record, fence);
              // Sent once: not again as a key, and no longer kept from eviction for it.
              pending.keys.delete(key);
              pending.fences.delete(key);
              (pending.written ??= new Set()).add(key);
              return written;
            },
            waitAsKey,
          );
        } catch (error) {
          // The local store found damaged data (`send` resolves for what it gives up): given up, the copies kept.
          if (!this.#givesUp(error, topScope.prefix)) throw error;
        }
        pending.whole = false;
        pending.clearedAt = undefined;
        pending.written = undefined;
        progressed = true;
      }
      for (const key of [...pending.keys]) {
        try {
          const { scope, id } = parseItemKey(key);
          // An item whose lock is held (a getset computing it) waits for a later pass; the others go on. A write of the
          // item that Redis took since forgot it: nothing to send.
          if (!(await sink.replay(scope, id, async (record) => !pending.keys.has(key) || send(scope, id, record, pending.fences.get(key) ?? 'plain')))) {
            // Readers may hold it without pause (a hot key): an exclusive request queued for it lets them drain.
            this.#queueReplay(top, key);
            continue;
          }
        } catch (error) {
          // The local store found damaged data (a write-through given up in `send` resolves): given up.
          if (!this.#givesUp(error, key)) throw error;
        }
        pending.keys.delete(key);
        pending.fences.delete(key);
        progressed = true;
      }
    } catch (error) {
      this.#pending.restore(pending);
      throw error;
    } finally {
      this.#replayingNow = undefined;
    }
    // What is left (held items) waits for the retry timer, which #keep sets.
    if (pending.keys.size > 0) this.#pending.restore(pending);
    else this.#pending.finish();
    await this.#keep(progressed);
  }

  /**
   * Whether a write-through that failed is given up rather than tried again (logged; the local copy is kept): Redis
   * answered it with an error (an ACL's refusal, a script's error), the local store found the data damaged
   * (`CACHE_CORRUPT`), or it is a `TypeError` (a mistake, such as a key that is no item key): trying
   * again would fail the same way, and hold up catching up on the change logs meanwhile. A timeout, a reply that may
   * pass later (`OOM`, `MISCONF`, `MOVED`, ...) and any other local failure are tried again.
   */
  #givesUp(error: unknown, key: string): boolean {
    if (this.#closed) return false;
    // A TypeError is a mistake (a key that is no item key) that trying again would make again.
    const forGood = error instanceof TierUnavailable ? error.answered : isCacheError(error, 'CACHE_CORRUPT') || error instanceof TypeError;
    if (!forGood) return false;
    // One line a minute at most: an ACL that refuses one write refuses them all.
    this.#failures.log('given up', `tier: a change Redis did not take is not written through, it failed again (${JSON.stringify(key)}): ${error instanceof Error ? error.message : String(error)}`);
    return true;
  }

  /** Adds the top-level scope to `<prefix>:scopes` (what a clear of the root scope clears), once per run. */
  async #nameTop(client: TierClient, top: string): Promise<void> {
    if (this.#namedTops.has(top)) return;
    await client.send(this.#keys.scopeNames, ['SADD', this.#keys.scopeNames, top]);
    this.#namedTops.add(top);
  }

  /**
   * A failed shared write: counted and logged by the connection; fails the call only when strict.
   * @throws CacheError `CACHE_TIER_UNAVAILABLE` when strict; a programming mistake as it is.
   */
  #failed(what: string, error: unknown): void {
    if (!(error instanceof TierUnavailable)) throw error;
    if (this.strict) throw new CacheError('CACHE_TIER_UNAVAILABLE', `The shared tier could not ${what}: ${error.message}`, { cause: error });
  }

  /** Remembers an acquire whose reply never came, and releases it at once if the tier is up (an error reply). */
  #orphan(token: string, top: string, itemKey: string): void {
    this.#orphans.set(token, { top, itemKey });
    if (this.#orphans.size > MAX_ORPHANS) this.#orphans.delete(this.#orphans.keys().next().value!);
    void this.#releaseOrphans();
  }

  /**
   * Releases the leases Redis may have granted to acquires whose reply never came, one pass at a time: a pass asked
   * for while one runs runs once after it. Those left while the tier is up are tried again {@link ORPHAN_RETRY_MS} later.
   */
  #releaseOrphans(): Promise<void> {
    if (this.#orphanPass !== undefined) {
      this.#orphanPassAgain = true;
      return this.#orphanPass;
    }
    clearTimeout(this.#orphanTimer);
    this.#orphanTimer = undefined;
    this.#orphanPass = (async () => {
      do {
        this.#orphanPassAgain = false;
        await this.#releaseOrphansOnce();
      } while (this.#orphanPassAgain && !this.#closed);
    })().finally(() => {
      this.#orphanPass = undefined;
      if (this.#orphans.size > 0 && this.#connection.up && !this.#closed) {
        this.#orphanTimer = setTimeout(() => void this.#releaseOrphans(), ORPHAN_RETRY_MS);
        this.#orphanTimer.unref();
      }
    });
    return this.#orphanPass;
  }

  async #releaseOrphansOnce(): Promise<void> {
    for (const [token, { top, itemKey }] of [...this.#orphans]) {
      if (!this.#connection.up || this.#closed) return;
      if (!this.#orphans.has(token)) continue;
      try {
        await this.#connection.run('release', (client) =>
          client.script(RELEASE_SCRIPT, [this.#keys.leases(top), this.#keys.leaseExpiries(top)], [itemKey, token, '', this.#keys.channel, encodeTopName(top)]),
        );
        this.#orphans.delete(token);
      } catch (error) {
        // Counted and logged by the connection. Answered with an error (an ACL, a script's error): the same release
        // would fail again, and the lease runs out by itself. Else the retry timer tries again while the tier is up.
        if (!(error instanceof TierUnavailable && error.answered) || this.#closed) return;
        this.#orphans.delete(token);
        this.#orphanGivenUp(itemKey, error);
      }
    }
  }

  /** Logs a release of an unheard-of grant given up: one line a minute at most, counting those left out. */
  #orphanGivenUp(itemKey: string, error: TierUnavailable): void {
    this.#failures.log(
      'orphan',
      `tier: the lease of an acquire whose reply never came is not released, Redis answered its release with an error (${JSON.stringify(itemKey)}); it runs out by itself: ${error.message}`,
    );
  }

  #hold(lease: RedisLease): void {
    this.#leasesGranted++;
    this.#leases.add(lease);
    const everyMs = Math.max(1, Math.floor(this.#options.leaseMs / 3));
    lease.timer = setInterval(() => void this.#renew(lease), everyMs);
    lease.timer.unref();
  }

  async #renew(lease: RedisLease): Promise<void> {
    if (!lease.held || !this.#connection.up) return;
    const startedMs = performance.now();
    let renewed: unknown;
    try {
      renewed = await this.#connection.run('renew', (client) =>
        client.script(
          RENEW_SCRIPT,
          [this.#keys.leases(lease.top), this.#keys.leaseExpiries(lease.top), this.#keys.generations(lease.top)],
          [lease.itemKey, lease.token, String(lease.fence), String(this.#options.leaseMs), String(lease.fields.length), ...lease.fields],
        ),
      );
    } catch {
      // Counted and logged by the connection; the next renewal tries again while the lease may still be live.
      return;
    }
    if (Number(renewed) === 1) lease.expiresAtMs = startedMs + this.#options.leaseMs;
    else lease.lose();
  }

  /**
   * Waits until the item's lease is released (a message on the channel), or `ms` passed, or the signal aborts; false
   * when the tier closed meanwhile.
   * @throws the signal's reason when it aborts.
   */
  #waitFor(key: string, ms: number, signal: AbortSignal | undefined): Promise<boolean> {
    return new Promise<boolean>((resolve, reject) => {
      let waiters = this.#waiters.get(key);
      if (waiters === undefined) this.#waiters.set(key, (waiters = new Set()));
      const done = () => {
        clearTimeout(timer);
        signal?.removeEventListener('abort', aborted);
        waiters.delete(wake);
        if (waiters.size === 0 && this.#waiters.get(key) === waiters) this.#waiters.delete(key);
      };
      const wake = () => {
        done();
        resolve(!this.#closed);
      };
      const aborted = () => {
        done();
        reject(signal!.reason);
      };
      const timer = setTimeout(wake, ms);
      waiters.add(wake);
      signal?.addEventListener('abort', aborted, { once: true });
    });
  }

  #wake(key: string): void {
    const waiters = this.#waiters.get(key);
    if (waiters !== undefined) for (const wake of [...waiters]) wake();
  }
}

/** The read's `copyable`, which ends the watch the first time it is asked (the caller asks once, right before keeping the copy). */
function askedOnce(watch: { copyable(): boolean; end(): void }): () => boolean {
  let answer: boolean | undefined;
  return () => {
    if (answer === undefined) {
      answer = watch.copyable();
      watch.end();
    }
    return answer;
  };
}
