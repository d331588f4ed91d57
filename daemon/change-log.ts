import { readFile, rename, writeFile } from 'node:fs/promises';
import { setTimeout as delay } from 'node:timers/promises';
import { isCacheError } from '../src/errors.js';
import { PerKindLog } from '../src/per-kind-log.js';
import { itemKey, parseItemKey, ROOT_SCOPE, type Scope, scopeOf } from '../src/scope-path.js';
import type { ScopeSharing, TierSink } from '../src/shared-tier.js';
import { isAnsweredReply, NodeDown, type TierClient, type TierConnection } from './tier-connection.js';
import { readTierIdentity } from './tier-identity.js';
import { parseTierMessage, type TierKeys, topOf } from './tier-keys.js';

/**
 * The most top-level scopes whose change log is followed: past it, taking up a new one drops the least recently used
 * one locally (its copies could no longer be kept true) and stops following it, so that memory stays bounded.
 */
export const MAX_TRACKED_SCOPES = 10_000;
/** The most reads watched at once: past it, the oldest is no longer watched, and so no longer copyable. */
export const MAX_WATCHED_READS = 100_000;
/** Change-log entries read per round trip while catching up. */
export const CATCH_UP_PAGE_ENTRIES = 1000;
/** The positions file is written at most this often while positions change (and at close). */
export const POSITIONS_WRITE_INTERVAL_MS = 1000;
/** How soon a failed catch-up is tried again (once the connection is up). */
export const CATCH_UP_RETRY_MS = 250;
/**
 * Local invalidations and drops under way at once, past which catching up waits: one waits for its item's lock, which a
 * `getset` holder may keep for long, so they run beside the reading of the log instead of holding it up.
 */
export const MAX_SINK_CALLS_IN_FLIGHT = 10_000;
/** Top-level scopes caught up at once after the subscription is (re)made. */
const CATCH_UP_CONCURRENCY = 32;

const STREAM_ID = /^\d+-\d+$/;
/** The `run_id` line of `INFO server`: a new one each time a Redis server starts. */
const RUN_ID = /^run_id:([0-9a-f]+)\r?$/m;

/** The part of the local store the change log uses: it drops copies, and never writes through. */
export type ChangeLogSink = Pick<TierSink, 'invalidate' | 'drop' | 'localScopes'>;

/** The part of the tier's connection the change log uses. */
export type ChangeLogConnection = Pick<TierConnection, 'run' | 'up' | 'subscribe' | 'setCatchingUp'>;

export interface ChangeLogOptions {
  connection: ChangeLogConnection;
  keys: TierKeys;
  /** This daemon run's id: entries it wrote itself are skipped. */
  origin: string;
  sink: ChangeLogSink;
  sharing(top: string): ScopeSharing;
  /** `<dataDir>/tier-positions.json`. */
  positionsPath: string;
  log(line: string): void;
  /** Lease releases heard on the channel, for RedisTier's waiters. */
  onReleased(itemKey: string): void;
  /** Default {@link MAX_TRACKED_SCOPES}. */
  maxTrackedScopes?: number;
  /**
   * Writes through this daemon's changes that Redis did not take, of one top-level scope (of every one: `undefined`),
   * before entries are applied to it or it is dropped; rejects when they could not all be written (the pass is then
   * tried again). Default: nothing to write.
   */
  replay?(top: string | undefined): Promise<void>;
  /**
   * Whether this daemon's change of the item waits to be written through: another machine's change of it is then not
   * applied locally (the write-through comes later in Redis, and wins there). Default: none waits.
   */
  isPending?(top: string, key: string): boolean;
}

/** A read through the tier, watched for changes to its item until it ends. */
export interface WatchedRead {
  /** Whether the shared copy read may still be kept locally: false once a change to it was heard, or could have been missed. */
  copyable(): boolean;
  /** Stops watching; `copyable` answers false from then on. */
  end(): void;
}

interface TopState {
  readonly top: string;
  /** The id of the last change-log entry read (and its local changes begun); `undefined` until fetched. */
  position: string | undefined;
  /** The id of the last entry whose local changes are done, and of every entry before it: what the positions file keeps. */
  applied: string | undefined;
  /**
   * The run id of the Redis server `position` was read from (`null`: it may not be read, an ACL; `undefined`: not known
   * yet): on another run, entries after the position may be lost (a restart, a failover), so the scope is dropped.
   */
  run: string | null | undefined;
  /** The run id `applied` was read from: what the positions file keeps with it. */
  appliedRun: string | null | undefined;
  /** The pages read whose local changes are under way, oldest first. */
  batches: Batch[];
  /** Local data may be older than the position this top will get (written while its fetch failed): drop it then. */
  unsure: boolean;
  /** The last pass failed: tried again by the retry timer. */
  failed: boolean;
  /** Bumped when the position is reset (another tier) or the top is no longer followed: a pass of an older one stops. */
  generation: number;
  /** The subscription's epoch in which a pass last succeeded: the scope is in sync while it is the current one. */
  syncedEpoch: number;
  running: Promise<boolean> | undefined;
  queued: Promise<boolean> | undefined;
}

/** One page's local changes: once they and every earlier page's are done, the position kept moves to `lastId`. */
interface Batch {
  readonly lastId: string;
  readonly run: string | null | undefined;
  done: boolean;
  /** No longer counted: the scope was dropped whole, or its position reset. */
  abandoned: boolean;
}

interface Read {
  readonly top: string;
  readonly key: string;
  readonly epoch: number;
  stale: boolean;
}

interface Entry {
  readonly id: string;
  readonly fields: ReadonlyMap<string, string>;
}

interface StreamInfo {
  readonly length: number;
  readonly entriesAdded: number;
  readonly lastId: string;
  readonly firstId: string | undefined;
}

/** What `<dataDir>/tier-positions.json` holds. */
interface PositionsFile {
  tierIdentity: string | null;
  keyPrefix: string;
  positions: Record<string, string>;
  /** The run id of the Redis server each position was read from, where it is known. */
  runs: Record<string, string>;
}

const NOT_COPYABLE: WatchedRead = Object.freeze({ copyable: () => false, end: () => {} });

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/** The scope holding every item of the top-level scope `top` (`''`: the root, for the root scope's own items). */
function scopeOfTop(top: string): Scope {
  return top === '' ? ROOT_SCOPE : scopeOf([top]);
}

/** The entries of an XRANGE reply (`[[id, [field, value, …]], …]`). */
function parseEntries(reply: unknown): Entry[] {
  if (!Array.isArray(reply)) throw new TypeError(`XRANGE replied ${typeof reply}`);
  return reply.map((raw: unknown) => {
    if (!Array.isArray(raw) || raw.length < 2 || !Array.isArray(raw[1])) throw new TypeError('XRANGE replied an entry of another shape');
    const flat = raw[1] as unknown[];
    const fields = new Map<string, string>();
    for (let at = 0; at + 1 < flat.length; at += 2) fields.set(String(flat[at]), String(flat[at + 1]));
    return { id: String(raw[0]), fields };
  });
}

/** The figures of an XINFO STREAM reply (a flat list of names and values). */
function parseStreamInfo(reply: unknown): StreamInfo {
  if (!Array.isArray(reply)) throw new TypeError(`XINFO STREAM replied ${typeof reply}`);
  const values = new Map<string, unknown>();
  for (let at = 0; at + 1 < reply.length; at += 2) values.set(String(reply[at]), reply[at + 1]);
  const length = Number(values.get('length'));
  const entriesAdded = Number(values.get('entries-added'));
  const lastId = String(values.get('last-generated-id'));
  const first = values.get('first-entry');
  if (!Number.isSafeInteger(length) || !Number.isSafeInteger(entriesAdded) || !STREAM_ID.test(lastId)) {
    throw new TypeError('XINFO STREAM replied without length, entries-added or last-generated-id (Redis 7.0 or later is needed)');
  }
  return { length, entriesAdded, lastId, firstId: Array.isArray(first) ? String(first[0]) : undefined };
}

function isNoSuchKey(error: unknown): boolean {
  return error instanceof Error && /no such key/i.test(error.message);
}

/**
 * Keeps this daemon's local copies of shared scopes true to the changes other daemons log: it follows, per top-level
 * scope in use, the scope's change log (a Redis stream) from the last entry applied, poked by the tier's channel; it
 * drops a scope locally when the log no longer reaches back to that entry (trimmed, or another Redis), and says which
 * reads through the tier may still be kept locally.
 *
 * Positions persist in the positions file, so that a restart goes on where the last run stopped; a top-level scope
 * with local data but no position kept for it is dropped before serving. A scope dropped keeps the items whose own
 * change waits to be written through (asked under each item's lock): written through later, they win in Redis.
 * Never rejects for Redis being down: a failed
 * catch-up is tried again every {@link CATCH_UP_RETRY_MS} while the connection is up, logged once a minute.
 */
export class ChangeLog {
  readonly #connection: ChangeLogConnection;
  readonly #keys: TierKeys;
  readonly #origin: string;
  readonly #sink: ChangeLogSink;
  readonly #sharing: (top: string) => ScopeSharing;
  readonly #positionsPath: string;
  readonly #log: (line: string) => void;
  readonly #onReleased: (itemKey: string) => void;
  readonly #maxTrackedScopes: number;
  readonly #replay: (top: string | undefined) => Promise<void>;
  readonly #isPending: (top: string, key: string) => boolean;
  /** The followed top-level scopes, least recently used first. */
  readonly #tops = new Map<string, TopState>();
  readonly #reads = new Set<Read>();
  readonly #abort = new AbortController();
  readonly #failures = new PerKindLog((line) => this.#write(line));
  /** The identity of the tier the positions are relative to; `undefined` when none is known (no trusted file yet). */
  #identity: string | null | undefined;
  #subscribed = false;
  /** Bumped whenever the subscription is made or lost: a read begun in another epoch is not copyable. */
  #epoch = 0;
  #catchingUp = false;
  #resyncWanted = false;
  #resyncing: Promise<void> | undefined;
  #retryTimer: NodeJS.Timeout | undefined;
  /** The identity check under way, shared by a resync and the retry timer, so that another identity drops once. */
  #identityCheck: Promise<boolean> | undefined;
  /** The identity could not be read since the last check began (its Cluster node down): read again by this timer. */
  #identityTimer: NodeJS.Timeout | undefined;
  #writeTimer: NodeJS.Timeout | undefined;
  #writing: Promise<void> | undefined;
  #lastWriteMs = -Infinity;
  #dirty = false;
  /** Whether start() read the positions file: only then may close() write it (it would otherwise lose them). */
  #loaded = false;
  #closed = false;
  #invalidations = 0;
  #droppedScopes = 0;
  #sinkCalls = 0;
  readonly #sinkRoom: (() => void)[] = [];
  /** Top-level scopes whose drop is walking them now, with how many such drops; and those whose last drop failed. */
  readonly #drops = new Map<string, number>();
  readonly #failedDrops = new Set<string>();

  constructor(options: ChangeLogOptions) {
    this.#connection = options.connection;
    this.#keys = options.keys;
    this.#origin = options.origin;
    this.#sink = options.sink;
    this.#sharing = options.sharing;
    this.#positionsPath = options.positionsPath;
    this.#log = options.log;
    this.#onReleased = options.onReleased;
    this.#maxTrackedScopes = options.maxTrackedScopes ?? MAX_TRACKED_SCOPES;
    this.#replay = options.replay ?? (async () => {});
    this.#isPending = options.isPending ?? (() => false);
  }

  /**
   * True until the change log is known to be followed (subscribed, every followed scope caught up since), and while a
   * scope's drop walks it (or failed, until one succeeds).
   */
  get catchingUp(): boolean {
    return this.#catchingUp || this.#drops.size > 0 || this.#failedDrops.size > 0;
  }

  /**
   * Whether the item's local copy may be served as a hit: its top-level scope caught up since the subscription was last
   * made, or Redis cannot be reached now (the local tier serves alone), or its own change waits to be written through
   * (the local copy is the newest). Drops under way are the sink's to know: it reads their copies as misses.
   */
  inSync(scope: Scope, id: string): boolean {
    if (this.#closed || !this.#connection.up) return true;
    const top = topOf(scope);
    const state = this.#tops.get(top);
    if (this.#subscribed && (state === undefined || state.syncedEpoch === this.#epoch)) return true;
    return this.#isPending(top, itemKey(scope, id));
  }

  figures(): { invalidations: number; droppedScopes: number } {
    return { invalidations: this.#invalidations, droppedScopes: this.#droppedScopes };
  }

  /**
   * Reads the positions file, drops every local top-level scope that is shared now but has no position in it (all but
   * the items whose own change waits to be written through), and subscribes to the tier's channel (which catches up
   * every followed scope once made).
   * @throws what the sink's `drop` throws (the local store failing); never for Redis being down.
   */
  async start(): Promise<void> {
    await this.#readPositions();
    this.#loaded = true;
    for (const top of [...this.#sink.localScopes()]) {
      if (this.#sharing(top) === 'local' || this.#tops.has(top)) continue;
      // Items whose own change waits (made on the scope's first use, during a cut) are kept: written through later.
      await this.#dropTop(top, 'no change-log position was kept for it');
    }
    this.#setCatchingUp(true);
    try {
      await this.#connection.subscribe(this.#keys.channel, {
        message: (text) => this.#heard(text),
        ready: () => this.#ready(),
        lost: () => this.#lost(),
      });
    } catch (error) {
      this.#logLimited('subscribe', `tier: subscribing to the change log failed: ${messageOf(error)}`);
    }
  }

  /**
   * Starts watching a read of the item through the tier: its copy becomes not copyable when a change to the item (or a
   * clear of a scope holding it) is applied meanwhile, when the subscription is lost, or when its top-level scope's
   * position was not known yet when it began.
   */
  beginRead(scope: Scope, id: string): WatchedRead {
    const top = topOf(scope);
    if (this.#closed || !this.#subscribed || this.#tops.get(top)?.position === undefined) return NOT_COPYABLE;
    if (this.#reads.size >= MAX_WATCHED_READS) {
      const oldest = this.#reads.values().next().value!;
      oldest.stale = true;
      this.#reads.delete(oldest);
    }
    const read: Read = { top, key: itemKey(scope, id), epoch: this.#epoch, stale: false };
    this.#reads.add(read);
    return {
      copyable: () => !read.stale && read.epoch === this.#epoch,
      end: () => {
        read.stale = true;
        this.#reads.delete(read);
      },
    };
  }

  /**
   * Follows the top-level scope's change log from now on, if it is not followed yet: its position is fetched at once
   * (before any command sent after this call), and reads in it are not copyable until it is known.
   */
  track(top: string): void {
    if (this.#closed) return;
    const known = this.#tops.get(top);
    if (known) {
      // Most recently used last.
      this.#tops.delete(top);
      this.#tops.set(top, known);
      return;
    }
    if (this.#tops.size >= this.#maxTrackedScopes) this.#forgetOldest();
    const state = this.#newState(top, undefined, undefined);
    // Taken up while subscribed, it has no local copy older than its position: in sync (one written while its position
    // cannot be fetched makes it unsure, and the next subscription's pass drops it).
    if (this.#subscribed) state.syncedEpoch = this.#epoch;
    this.#tops.set(top, state);
    void this.#sync(state);
  }

  /** Stops following the change log and writes the positions file. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#abort.abort();
    clearTimeout(this.#retryTimer);
    clearTimeout(this.#identityTimer);
    clearTimeout(this.#writeTimer);
    for (const read of this.#reads) read.stale = true;
    this.#reads.clear();
    for (const resume of this.#sinkRoom.splice(0)) resume();
    await Promise.allSettled([this.#resyncing, this.#identityCheck, this.#writing, ...[...this.#tops.values()].map((state) => state.running)]);
    if (this.#loaded) await this.#writePositions();
  }

  #newState(top: string, position: string | undefined, run: string | undefined): TopState {
    return {
      top,
      position,
      applied: position,
      run,
      appliedRun: run,
      batches: [],
      unsure: false,
      failed: false,
      generation: 0,
      syncedEpoch: -1,
      running: undefined,
      queued: undefined,
    };
  }

  #isCurrent(state: TopState, generation: number): boolean {
    return !this.#closed && state.generation === generation && this.#tops.get(state.top) === state;
  }

  /** Drops the least recently used followed scope locally and stops following it. */
  #forgetOldest(): void {
    const [top, state] = this.#tops.entries().next().value!;
    this.#tops.delete(top);
    this.#reset(state);
    this.#markStale(top, () => true);
    this.#markDirty();
    void this.#dropUntilDone(top, `more than ${this.#maxTrackedScopes} shared scopes are in use, and it was used least recently`);
  }

  /**
   * Drops a scope no longer followed, again every {@link CATCH_UP_RETRY_MS} while it fails (no page of the log will
   * retry it), until it succeeds or the change log closes; its copies read as misses meanwhile.
   */
  async #dropUntilDone(top: string, reason: string): Promise<void> {
    for (;;) {
      try {
        await this.#dropTop(top, reason);
        return;
      } catch (error) {
        if (this.#closed || isCacheError(error, 'CACHE_CLOSED')) return;
        this.#logLimited('drop', `tier: dropping scope ${JSON.stringify(top)} locally failed, trying again (its copies read as misses meanwhile): ${messageOf(error)}`);
      }
      const aborted = await delay(CATCH_UP_RETRY_MS, false, { signal: this.#abort.signal, ref: false }).catch(() => true);
      if (aborted) return;
    }
  }

  #heard(text: string): void {
    if (this.#closed) return;
    const message = parseTierMessage(text);
    if (!message) {
      this.#logLimited('message', `tier: a message on ${this.#keys.channel} was not understood: ${JSON.stringify(text.slice(0, 200))}`);
      return;
    }
    if (message.kind === 'released') {
      try {
        this.#onReleased(message.key);
      } catch (error) {
        this.#logLimited('released', `tier: waking the waiters of a released lease failed: ${messageOf(error)}`);
      }
      return;
    }
    const state = this.#tops.get(message.top);
    if (state) void this.#sync(state);
  }

  #ready(): void {
    if (this.#closed) return;
    this.#subscribed = true;
    this.#epoch++;
    this.#setCatchingUp(true);
    this.#resyncWanted = true;
    this.#startResync();
  }

  #startResync(): void {
    if (this.#resyncing) return;
    this.#resyncing = this.#resync().finally(() => {
      this.#resyncing = undefined;
      // A subscription made again while the last pass was ending.
      if (this.#resyncWanted && this.#subscribed && !this.#closed) this.#startResync();
    });
  }

  #lost(): void {
    if (this.#closed) return;
    this.#subscribed = false;
    this.#epoch++;
    this.#setCatchingUp(true);
  }

  #setCatchingUp(catchingUp: boolean): void {
    this.#catchingUp = catchingUp;
    this.#showState();
  }

  /** Tells the connection whether the tier is catching up: on the change log, or dropping a scope. */
  #showState(): void {
    try {
      this.#connection.setCatchingUp(this.catchingUp);
    } catch (error) {
      this.#logLimited('state', `tier: telling the connection its state failed: ${messageOf(error)}`);
    }
  }

  /** After each (re)subscription: checks the tier's identity, then catches up every followed scope; until both succeed. */
  async #resync(): Promise<void> {
    while (this.#resyncWanted && this.#subscribed && !this.#closed) {
      this.#resyncWanted = false;
      const epoch = this.#epoch;
      let done = false;
      try {
        // This daemon's own changes first. Each scope's pass writes its own through first again, so a scope whose
        // changes could not go (its Cluster node down, its local store failing) holds back only itself.
        await this.#replay(undefined).catch((error: unknown) => {
          if (!(error instanceof NodeDown)) this.#logLimited('replay', `tier: writing through the changes Redis did not take failed, trying again: ${messageOf(error)}`);
        });
        await this.#checkIdentityOrGoOn();
        const states = [...this.#tops.values()];
        const results: boolean[] = [];
        const worker = async (): Promise<void> => {
          for (let state = states.pop(); state; state = states.pop()) results.push(await this.#sync(state));
        };
        await Promise.all(Array.from({ length: CATCH_UP_CONCURRENCY }, worker));
        done = results.every(Boolean);
      } catch (error) {
        this.#logLimited('catch-up', `tier: catching up on the change log failed, trying again: ${messageOf(error)}`);
      }
      if (!done) {
        this.#resyncWanted = true;
        await delay(CATCH_UP_RETRY_MS, undefined, { signal: this.#abort.signal, ref: false }).catch(() => {});
      } else if (epoch === this.#epoch && !this.#resyncWanted) {
        this.#setCatchingUp(false);
      }
    }
  }

  /**
   * Checks the tier's identity; when its Cluster node is marked down, goes on with the one known before and reads it
   * again every {@link CATCH_UP_RETRY_MS} until it answers (a new subscription's pass reads it too). Meanwhile each
   * scope's position is still checked against its own log and the run id of the server holding it; the identity, on one
   * node only, tells nothing of the others' data.
   * @throws what {@link ChangeLog.#checkIdentity} throws, but for its node being down.
   */
  async #checkIdentityOrGoOn(): Promise<void> {
    try {
      await this.#sharedIdentityCheck();
    } catch (error) {
      if (!(error instanceof NodeDown)) throw error;
      this.#logLimited(
        'identity down',
        `tier: the tier's identity cannot be read (${messageOf(error)}): scopes are caught up with the one known before, and it is read again until its node answers`,
      );
      this.#checkIdentityLater();
    }
  }

  #sharedIdentityCheck(): Promise<boolean> {
    const check = (this.#identityCheck ??= this.#checkIdentity().finally(() => {
      if (this.#identityCheck === check) this.#identityCheck = undefined;
    }));
    return check;
  }

  #checkIdentityLater(): void {
    if (this.#identityTimer !== undefined || this.#closed) return;
    this.#identityTimer = setTimeout(() => {
      this.#identityTimer = undefined;
      void this.#checkIdentityAgain();
    }, CATCH_UP_RETRY_MS).unref();
  }

  /** The timer's check: another identity found resets every scope, which a resync then catches up (catching-up meanwhile). */
  async #checkIdentityAgain(): Promise<void> {
    // Not subscribed: the next subscription's pass checks it.
    if (this.#closed || !this.#subscribed) return;
    if (!this.#connection.up) return this.#checkIdentityLater();
    let reset: boolean;
    try {
      reset = await this.#sharedIdentityCheck();
    } catch (error) {
      if (!(error instanceof NodeDown)) this.#logLimited('identity', `tier: reading the tier's identity failed, trying again: ${messageOf(error)}`);
      return this.#checkIdentityLater();
    }
    if (!reset || this.#closed) return;
    this.#setCatchingUp(true);
    this.#resyncWanted = true;
    this.#startResync();
  }

  /**
   * Reads the tier's identity (setting it when there is none): when it is not the one the positions were kept for
   * (another Redis, or one that lost its data), every shared scope is dropped locally and its position fetched anew.
   * Resolves whether it was another.
   */
  async #checkIdentity(): Promise<boolean> {
    // A user who may not read or set it (an ACL): the identity stays unknown (null), which trusts no kept position.
    const current = await readTierIdentity(this.#connection, this.#keys);
    if (this.#closed || this.#identity === undefined || current === this.#identity) {
      if (this.#identity !== current) this.#markDirty();
      this.#identity = current;
      return false;
    }
    this.#logLimited(
      'identity',
      `tier: the tier's identity is ${JSON.stringify(current)}, not ${JSON.stringify(this.#identity)} as when the positions ` +
        'were kept: every shared scope is dropped locally',
    );
    for (const read of this.#reads) read.stale = true;
    // Each followed scope fetches its position anew, and drops its local data once it has it.
    for (const state of this.#tops.values()) {
      this.#reset(state);
      state.unsure = true;
      // Not in sync until caught up again (found by the retry timer, the subscription's epoch has not moved).
      state.syncedEpoch = -1;
    }
    for (const top of [...this.#sink.localScopes()]) {
      if (this.#sharing(top) !== 'local' && !this.#tops.has(top)) await this.#dropTop(top, 'the tier is not the one its position was kept for');
    }
    // Only now: should a drop fail, the next try finds the identities different again.
    this.#identity = current;
    this.#markDirty();
    return true;
  }

  /** Forgets the scope's position: a pass under way stops, its pages under way no longer count. */
  #reset(state: TopState): void {
    state.generation++;
    this.#settle(state, undefined, undefined);
  }

  /** Sets both positions to `position` read from `run`, the pages under way no longer counted (the scope was dropped, or is new). */
  #settle(state: TopState, position: string | undefined, run: string | null | undefined): void {
    for (const batch of state.batches) batch.abandoned = true;
    state.batches = [];
    state.position = position;
    state.applied = position;
    state.run = run;
    state.appliedRun = run;
    this.#markDirty();
  }

  /** Runs a pass over the scope's change log, or, when one is running, one more after it; resolves whether it succeeded. */
  #sync(state: TopState): Promise<boolean> {
    if (!state.running) {
      state.running = this.#pass(state).finally(() => {
        state.running = undefined;
      });
      return state.running;
    }
    state.queued ??= state.running.then(() => {
      state.queued = undefined;
      return this.#sync(state);
    });
    return state.queued;
  }

  async #pass(state: TopState): Promise<boolean> {
    const generation = state.generation;
    if (!this.#isCurrent(state, generation)) return true;
    // Caught up by this pass only if subscribed when it began: a change announced since then starts another pass.
    const epoch = this.#subscribed ? this.#epoch : undefined;
    try {
      await this.#replay(state.top);
      if (!this.#isCurrent(state, generation)) return true;
      if (state.position === undefined) await this.#fetchPosition(state, generation);
      else await this.#catchUp(state, generation);
      state.failed = false;
      if (epoch !== undefined && this.#isCurrent(state, generation)) state.syncedEpoch = epoch;
      return true;
    } catch (error) {
      if (!this.#isCurrent(state, generation)) return true;
      // Whatever is written locally meanwhile may predate the position this scope will get.
      if (state.position === undefined) state.unsure = true;
      state.failed = true;
      const scope = JSON.stringify(state.top);
      this.#logLimited('catch-up', `tier: catching up on the change log of scope ${scope} failed, trying again: ${messageOf(error)}`);
      this.#retryLater();
      // A scope on a Cluster node marked down is not caught up, but is no reason to say the tier is catching up:
      // status names the node, and the scope is tried again until it answers.
      return error instanceof NodeDown;
    }
  }

  #retryLater(): void {
    if (this.#retryTimer !== undefined || this.#closed) return;
    this.#retryTimer = setTimeout(() => {
      this.#retryTimer = undefined;
      if (!this.#connection.up) {
        this.#retryLater();
        return;
      }
      for (const state of this.#tops.values()) if (state.failed) void this.#sync(state);
    }, CATCH_UP_RETRY_MS).unref();
  }

  /** A new scope's position: the log's last entry, or `0-0` when it has none yet. */
  async #fetchPosition(state: TopState, generation: number): Promise<void> {
    const { info, run } = await this.#streamInfo(state.top);
    if (!this.#isCurrent(state, generation)) return;
    if (state.unsure) {
      state.unsure = false;
      this.#dropFrom(state, info?.lastId ?? '0-0', run, 'its local data may be older than its change-log position');
      return;
    }
    this.#settle(state, info?.lastId ?? '0-0', run);
  }

  /**
   * Applies the scope's change-log entries after its position, a page at a time. Each page is read from the position's
   * own entry on: Redis trims a stream from its oldest entry, so while that entry is there, none after it is gone.
   * (Redis 7.0's `max-deleted-entry-id` does not move when a stream is trimmed, only on XDEL.) Each page is read with the
   * run id of the Redis server answering: on another run than the position's, the entries after it may be lost even
   * when its own entry is there (a restart that lost the last writes, a failover to a replica that lagged, a shard
   * that restarted empty while the log was empty), so the scope is dropped.
   */
  async #catchUp(state: TopState, generation: number): Promise<void> {
    const { top } = state;
    for (let cursor = state.position!; this.#isCurrent(state, generation); ) {
      await this.#roomForSinkCalls();
      if (!this.#isCurrent(state, generation)) return;
      let entries: Entry[];
      let more: boolean;
      let run: string | null;
      if (cursor === '0-0') {
        // From the log's start: no entry may ever have been removed, and the first read must be the first there was.
        const read = await this.#streamInfo(top);
        const { info } = read;
        const changed = this.#runChanged(state, read.run);
        if (changed !== undefined) return this.#lose(state, generation, changed);
        if (info === null || (info.length === 0 && info.entriesAdded === 0)) return this.#confirmRun(state, read.run);
        if (info.entriesAdded !== info.length) return this.#lose(state, generation, 'its change log was trimmed before it was read');
        const page = await this.#range(top, '-', CATCH_UP_PAGE_ENTRIES);
        ({ run } = page);
        const changedSince = this.#runChanged(state, run);
        if (changedSince !== undefined) return this.#lose(state, generation, changedSince);
        if (page.entries.length === 0 || page.entries[0]!.id !== info.firstId) return this.#lose(state, generation, 'its change log was trimmed before it was read');
        entries = page.entries;
        more = entries.length === CATCH_UP_PAGE_ENTRIES;
      } else {
        const page = await this.#range(top, cursor, CATCH_UP_PAGE_ENTRIES + 1);
        ({ run } = page);
        const changedSince = this.#runChanged(state, run);
        if (changedSince !== undefined) return this.#lose(state, generation, changedSince);
        if (page.entries[0]?.id !== cursor) return this.#lose(state, generation, `its change log no longer reaches back to entry ${cursor}`);
        entries = page.entries.slice(1);
        more = page.entries.length === CATCH_UP_PAGE_ENTRIES + 1;
      }
      if (!this.#isCurrent(state, generation)) return;
      if (entries.length > 0) {
        this.#apply(state, entries, run);
        cursor = state.position!;
      } else {
        this.#confirmRun(state, run);
      }
      if (!more) return;
    }
  }

  /** Why the scope must be dropped when `run` (the server's run id read with a page) is known to be another than the position's. */
  #runChanged(state: TopState, run: string | null): string | undefined {
    if (typeof state.run !== 'string' || run === null || run === state.run) return undefined;
    return `the Redis server holding its change log is another run (${run}) than the one its position was read from (${state.run}): a restart or a failover may have lost changes`;
  }

  /** Takes `run` as the position's when none was known (a position kept by an older file, or INFO refused before). */
  #confirmRun(state: TopState, run: string | null): void {
    if (typeof state.run === 'string' || run === null) return;
    state.run = run;
    if (state.batches.length === 0) state.appliedRun = run;
    this.#markDirty();
  }

  /** The scope's change log lost entries this daemon had not applied: drops the scope locally and goes on from the log's end. */
  async #lose(state: TopState, generation: number, reason: string): Promise<void> {
    const { info, run } = await this.#streamInfo(state.top);
    if (!this.#isCurrent(state, generation)) return;
    this.#dropFrom(state, info?.lastId ?? '0-0', run, reason);
  }

  /**
   * Drops the scope locally, all but the items whose own change waits (asked under each item's lock: written through
   * later, they win in Redis), and goes on from `position` (the log's end, fetched before) at once: reads under way
   * stop being copyable now, and the drop runs as the first page's local changes, so that the position kept moves to
   * `position` only once it is done, while catching up goes on beside it.
   */
  #dropFrom(state: TopState, position: string, run: string | null, reason: string): void {
    this.#markStale(state.top, () => true);
    const { applied, appliedRun } = state;
    this.#settle(state, position, run);
    state.applied = applied;
    state.appliedRun = appliedRun;
    const batch: Batch = { lastId: position, run, done: false, abandoned: false };
    state.batches.push(batch);
    void this.#runBatch(state, batch, [() => this.#dropTop(state.top, reason)]);
  }

  /**
   * Applies a page of other daemons' entries: reads under way that they touch stop being copyable at once, and the
   * local copies' removal begins (it goes on beside the reading of the next pages; see {@link MAX_SINK_CALLS_IN_FLIGHT}).
   */
  #apply(state: TopState, entries: readonly Entry[], run: string | null): void {
    const { top } = state;
    const items = new Map<string, { scope: Scope; id: string }>();
    const scopes = new Map<string, Scope>();
    for (const { fields } of entries) {
      if (fields.get('o') === this.#origin) continue;
      const kind = fields.get('t');
      const key = fields.get('k') ?? '';
      if (kind === 's' || kind === 'd') {
        const item = this.#itemOf(top, key);
        if (item) {
          if (!this.#isPending(top, key)) items.set(key, item);
          continue;
        }
      } else if (kind === 'c') {
        const scope = this.#clearedScopeOf(top, key);
        if (scope) {
          scopes.set(scope.prefix, scope);
          continue;
        }
      }
      // An entry this version cannot read: the whole scope goes, never a stale copy kept.
      const entry = `${JSON.stringify(kind)} ${JSON.stringify(key)}`;
      this.#logLimited('entry', `tier: a change-log entry of scope ${JSON.stringify(top)} was not understood (${entry}): the scope is dropped locally`);
      const whole = scopeOfTop(top);
      scopes.set(whole.prefix, whole);
    }
    const prefixes = [...scopes.keys()];
    for (const key of items.keys()) if (prefixes.some((prefix) => key.startsWith(prefix))) items.delete(key);
    this.#markStale(top, (key) => items.has(key) || prefixes.some((prefix) => key.startsWith(prefix)));
    const calls = [
      ...[...items.entries()].map(([key, { scope, id }]) => async () => {
        // Asked again under the item's lock: a local write that held it may have failed meanwhile, and now waits.
        let kept = false;
        await this.#sink.invalidate(scope, id, { keepIf: () => (kept = this.#isPending(top, key)) });
        if (!kept) this.#invalidations++;
      }),
      // As every drop: the items whose own change waits are kept (written through later, they win in Redis).
      ...[...scopes.values()].map((scope) => async () => {
        await this.#sink.drop(scope, { keepIf: (current, id) => this.#isPending(top, itemKey(current, id)) });
      }),
    ];
    state.position = entries[entries.length - 1]!.id;
    // A run id refused (null) leaves the one known: the next page read with it is checked against it.
    if (run !== null) state.run = run;
    const batch: Batch = { lastId: state.position, run: state.run, done: false, abandoned: false };
    state.batches.push(batch);
    void this.#runBatch(state, batch, calls);
  }

  /** Runs a page's local changes, again every {@link CATCH_UP_RETRY_MS} while some fail; then moves the position kept. */
  async #runBatch(state: TopState, batch: Batch, calls: (() => Promise<void>)[]): Promise<void> {
    for (let left = calls; left.length > 0; ) {
      const results = await Promise.allSettled(left.map((call) => this.#callSink(call)));
      const failed = left.filter((_, at) => results[at]!.status === 'rejected');
      if (failed.length === 0) break;
      const reasons = results.flatMap((result) => (result.status === 'rejected' ? [result.reason as unknown] : []));
      // The local store closed (it closes before the tier, rejecting what waits for its locks): nothing to try again.
      if (this.#closed || batch.abandoned || reasons.every((reason) => isCacheError(reason, 'CACHE_CLOSED'))) return;
      const reason = reasons.find((reason) => !isCacheError(reason, 'CACHE_CLOSED'));
      this.#logLimited('local', `tier: dropping local copies that changed in the tier failed, trying again: ${messageOf(reason)}`);
      const aborted = await delay(CATCH_UP_RETRY_MS, false, { signal: this.#abort.signal, ref: false }).catch(() => true);
      if (aborted || batch.abandoned) return;
      left = failed;
    }
    batch.done = true;
    if (batch.abandoned) return;
    let moved = false;
    while (state.batches[0]?.done) {
      const done = state.batches.shift()!;
      state.applied = done.lastId;
      state.appliedRun = done.run;
      moved = true;
    }
    if (moved) this.#markDirty();
  }

  #callSink(call: () => Promise<void>): Promise<void> {
    this.#sinkCalls++;
    return call().finally(() => {
      this.#sinkCalls--;
      this.#sinkRoom.shift()?.();
    });
  }

  /** Waits while {@link MAX_SINK_CALLS_IN_FLIGHT} local changes are under way. */
  async #roomForSinkCalls(): Promise<void> {
    while (this.#sinkCalls >= MAX_SINK_CALLS_IN_FLIGHT && !this.#closed) await new Promise<void>((resolve) => this.#sinkRoom.push(resolve));
  }

  /** The item an `s`/`d` entry names, if its key is one of the scope's item keys. */
  #itemOf(top: string, key: string): { scope: Scope; id: string } | undefined {
    if (!key.includes(':')) return undefined;
    const item = parseItemKey(key);
    return topOf(item.scope) === top && itemKey(item.scope, item.id) === key ? item : undefined;
  }

  /** The scope a `c` entry cleared: its prefix's, or the whole top-level scope for `''` (a clear of the root). */
  #clearedScopeOf(top: string, prefix: string): Scope | undefined {
    if (prefix === '') return scopeOfTop(top);
    const { scope, id } = parseItemKey(`${prefix}:`);
    return id === '' && scope.prefix === prefix && topOf(scope) === top ? scope : undefined;
  }

  #markStale(top: string, matches: (key: string) => boolean): void {
    for (const read of this.#reads) if (read.top === top && matches(read.key)) read.stale = true;
  }

  /**
   * Drops the scope locally, all but the items whose own change waits to be written through (asked under each item's
   * lock). The tier says catching-up until the drop has walked the scope (its copies read as misses meanwhile), and
   * after a failed one until a later drop of the scope succeeds.
   */
  async #dropTop(top: string, reason: string): Promise<void> {
    this.#drops.set(top, (this.#drops.get(top) ?? 0) + 1);
    this.#showState();
    let walking = true;
    const end = (succeeded: boolean): void => {
      if (!walking) return;
      walking = false;
      const left = this.#drops.get(top)! - 1;
      if (left === 0) this.#drops.delete(top);
      else this.#drops.set(top, left);
      if (succeeded) {
        this.#failedDrops.delete(top);
        this.#droppedScopes++;
      } else {
        this.#failedDrops.add(top);
      }
      this.#showState();
    };
    try {
      await this.#sink.drop(scopeOfTop(top), { keepIf: (scope, id) => this.#isPending(top, itemKey(scope, id)), synced: () => end(true) });
    } catch (error) {
      end(false);
      throw error;
    }
    end(true);
    this.#logLimited('drop', `tier: scope ${JSON.stringify(top)} was dropped locally: ${reason}`);
  }

  /** The scope's change log's figures (`null` when it has none), and the run id of the server that answered. */
  async #streamInfo(top: string): Promise<{ info: StreamInfo | null; run: string | null }> {
    const key = this.#keys.changeLog(top);
    const [reply, run] = await this.#withRun(key, (client) =>
      client.send(key, ['XINFO', 'STREAM', key], { readonly: true }).catch((error: unknown) => {
        if (isNoSuchKey(error)) return null;
        throw error;
      }),
    );
    return { info: reply === null ? null : parseStreamInfo(reply), run };
  }

  /** Up to `count` entries of the scope's change log from `start` (inclusive; `-` for the first), and the run id of the server that answered. */
  async #range(top: string, start: string, count: number): Promise<{ entries: Entry[]; run: string | null }> {
    const key = this.#keys.changeLog(top);
    const command = ['XRANGE', key, start, '+', 'COUNT', String(count)];
    const [reply, run] = await this.#withRun(key, (client) => client.send(key, command, { readonly: true }));
    return { entries: parseEntries(reply), run };
  }

  /**
   * Sends `command` right after asking the run id of the server holding `key` (on its connection, so a restart between
   * the two gives the older run id, and the next page drops the scope); resolves to its reply and the run id, `null` for
   * a Redis user who may not run INFO (an ACL), logged once a minute.
   */
  #withRun<R>(key: string, command: (client: TierClient) => Promise<R>): Promise<[R, string | null]> {
    return this.#connection.run('change log', async (client) => {
      const { reply } = await client.queueInfo(key, 'server');
      return Promise.all([command(client), this.#runOf(reply)]);
    });
  }

  async #runOf(info: Promise<string>): Promise<string | null> {
    let text: string;
    try {
      text = await info;
    } catch (error) {
      // Refused for good (an ACL's NOPERM, INFO renamed away): as a run id never found.
      if (!isAnsweredReply(error)) throw error;
      this.#noRunId(`Redis refused INFO (${messageOf(error)})`);
      return null;
    }
    const run = RUN_ID.exec(text)?.[1];
    if (run === undefined) this.#noRunId('INFO server named no run_id');
    return run ?? null;
  }

  #noRunId(why: string): void {
    this.#logLimited(
      'run id',
      `tier: ${why}: a restart or failover of Redis that lost changes is noticed only when it lost a position's own entry or the tier's identity (README: ACLs)`,
    );
  }

  /** Logs a failure of `kind` at most once a minute, counting the others in the next line. */
  #logLimited(kind: string, line: string): void {
    this.#failures.log(kind, line);
  }

  /** Logs a line; a log that throws loses it, never a catch-up. */
  #write(line: string): void {
    try {
      this.#log(line);
    } catch {
      // Nowhere left to say it.
    }
  }

  async #readPositions(): Promise<void> {
    let text: string;
    try {
      text = await readFile(this.#positionsPath, 'utf8');
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return;
      this.#write(`tier: the change-log positions could not be read (${messageOf(error)}): every shared scope is dropped locally`);
      return;
    }
    let file: unknown;
    try {
      file = JSON.parse(text);
    } catch {
      this.#write(`tier: ${this.#positionsPath} is not JSON: every shared scope is dropped locally`);
      return;
    }
    const { tierIdentity, keyPrefix, positions, runs } = (file ?? {}) as Partial<PositionsFile>;
    // Positions kept for another key prefix, or with no identity to check them against, are not trusted.
    if (keyPrefix !== this.#keys.prefix || typeof tierIdentity !== 'string' || typeof positions !== 'object' || positions === null) return;
    this.#identity = tierIdentity;
    for (const [top, position] of Object.entries(positions)) {
      if (this.#tops.size >= this.#maxTrackedScopes) break;
      const trusted = typeof position === 'string' && STREAM_ID.test(position) && this.#sharing(top) !== 'local';
      const run: unknown = typeof runs === 'object' && runs !== null && Object.hasOwn(runs, top) ? runs[top] : undefined;
      if (trusted) this.#tops.set(top, this.#newState(top, position, typeof run === 'string' ? run : undefined));
    }
  }

  #markDirty(): void {
    this.#dirty = true;
    if (this.#writeTimer !== undefined || this.#writing !== undefined || this.#closed || !this.#loaded) return;
    const waitMs = Math.max(0, this.#lastWriteMs + POSITIONS_WRITE_INTERVAL_MS - performance.now());
    this.#writeTimer = setTimeout(() => {
      this.#writeTimer = undefined;
      this.#writing = this.#writePositions().finally(() => {
        this.#writing = undefined;
        if (this.#dirty) this.#markDirty();
      });
    }, waitMs).unref();
  }

  /** Writes the positions of the entries applied, whole under another name and then renamed, so a reader never sees half. */
  async #writePositions(): Promise<void> {
    this.#dirty = false;
    this.#lastWriteMs = performance.now();
    // fromEntries defines own properties: a scope named `__proto__` is a position like any other.
    const kept = [...this.#tops.values()].filter(({ applied }) => applied !== undefined);
    const positions = Object.fromEntries(kept.map(({ top, applied }) => [top, applied!]));
    const runs = Object.fromEntries(kept.flatMap(({ top, appliedRun }) => (typeof appliedRun === 'string' ? [[top, appliedRun]] : [])));
    const file: PositionsFile = { tierIdentity: this.#identity ?? null, keyPrefix: this.#keys.prefix, positions, runs };
    const temporary = `${this.#positionsPath}.tmp`;
    try {
      await writeFile(temporary, `${JSON.stringify(file)}\n`, { mode: 0o600 });
      await rename(temporary, this.#positionsPath);
    } catch (error) {
      this.#dirty = true;
      this.#logLimited('positions', `tier: writing the change-log positions failed, trying again: ${messageOf(error)}`);
    }
  }
}
