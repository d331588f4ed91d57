import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, onTestFinished, test } from 'vitest';
import { RedisTier } from '../daemon/redis-tier.js';
import { encodeTopName, generationFields, TierKeys } from '../daemon/tier-keys.js';
import { WRITE_SCRIPT } from '../daemon/tier-scripts.js';
import { isCacheError } from '../src/errors.js';
import { itemKey, ROOT_SCOPE, type Scope, scopeOf } from '../src/scope-path.js';
import type { ScopeSharing, TierSink } from '../src/shared-tier.js';
import type { EncodedRecord } from '../src/store.js';
import { readOnlyRules, type RedisServer, startRedisCluster, startRedisServer, startTcpProxy } from './support/redis-server.js';
import { tempDir } from './support/temp-dir.js';

/**
 * RedisTier against a real redis-server (one per file, on a Unix socket), several tiers standing in for machines:
 * what a write, a delete, a clear and a lease do in Redis, fencing, waking waiters, and Redis being stopped.
 */

let server: RedisServer;
let prefixes = 0;

beforeAll(async () => {
  server = await startRedisServer({ unixSocket: true, until: 'manual', users: [{ name: 'reader', password: 'pw', rules: readOnlyRules('t') }] });
});

afterAll(async () => {
  await server?.stop();
});

/** What the tier asked of the local store. */
interface RecordingSink extends TierSink<EncodedRecord['value']> {
  readonly invalidated: string[];
  readonly dropped: string[];
  /** Local records a test puts in, by item key: what a write-through of the item sends (nothing for other items). */
  readonly local: Map<string, EncodedRecord>;
  /** Each write-through sent, as `<item key>:<whether Redis took it>`. */
  readonly replayed: string[];
  /** Items whose lock the test holds: `replay` finds it taken (and counts the try in `tries`), `replayQueued` waits. */
  readonly held: Set<string>;
  readonly tries: Map<string, number>;
  /** The queued requests for held items, as `queued <item key>` and `aborted <item key>`. */
  readonly queued: string[];
}

function recordingSink(): RecordingSink {
  const invalidated: string[] = [];
  const dropped: string[] = [];
  const local = new Map<string, EncodedRecord>();
  const replayed: string[] = [];
  const held = new Set<string>();
  const tries = new Map<string, number>();
  const queued: string[] = [];
  return {
    invalidated,
    dropped,
    local,
    replayed,
    held,
    tries,
    queued,
    invalidate: async (scope, id) => void invalidated.push(`${scope.prefix}:${id}`),
    drop: async (scope) => void dropped.push(scope.prefix),
    localScopes: () => [],
    // Only what the test put in the local store is written through (other changes are forgotten once Redis answers).
    replay: async (scope, id, send) => {
      const key = itemKey(scope, id);
      if (held.has(key)) {
        tries.set(key, (tries.get(key) ?? 0) + 1);
        return false;
      }
      const found = local.get(key);
      if (found !== undefined) replayed.push(`${key}:${String(await send(found))}`);
      return true;
    },
    // The item's lock stays held (by whatever the test says holds it): the request is granted never, only aborted.
    replayQueued: (scope, id, _send, { signal }) => {
      queued.push(`queued ${itemKey(scope, id)}`);
      return new Promise((resolve) =>
        signal.addEventListener(
          'abort',
          () => {
            queued.push(`aborted ${itemKey(scope, id)}`);
            resolve(false);
          },
          { once: true },
        ),
      );
    },
    replayScope: async () => [],
  };
}

interface TierSetup {
  url?: string;
  /** The seed nodes of a Redis Cluster, instead of `url`. */
  clusterUrls?: readonly string[];
  prefix?: string;
  sharing?: Record<string, ScopeSharing>;
  leaseMs?: number;
  timeoutMs?: number;
  strict?: boolean;
  maxValueBytes?: number;
  username?: string;
  password?: string;
  /** How long a waiter sleeps between asks when no release wakes it. */
  maxWaitSliceMs?: number;
  /** What `tier-pending.json` holds when the tier starts: changes a previous run left to write through. */
  pendingFile?: unknown;
  /** The sink's `replayScope` (none: nothing to write through). */
  replayScope?: TierSink<EncodedRecord['value']>['replayScope'];
  /** The top-level scopes whose local store fails every write-through (an I/O error). */
  failingTops?: readonly string[];
  /** Local records the sink holds from the start, by item key. */
  local?: ReadonlyMap<string, EncodedRecord>;
  /** Item keys whose lock the sink finds held from the start. */
  held?: readonly string[];
}

/** A tier as one machine's daemon would make it, attached and closed when the test ends. */
async function makeTier(setup: TierSetup = {}): Promise<{ tier: RedisTier; sink: RecordingSink; log: string[]; dataDir: string }> {
  const log: string[] = [];
  const dataDir = await tempDir('hoard-tier-');
  if (setup.pendingFile !== undefined) await writeFile(join(dataDir, 'tier-pending.json'), JSON.stringify(setup.pendingFile), { mode: 0o600 });
  const sharing = Object.assign(Object.create(null) as Record<string, ScopeSharing>, { '*': 'shared' }, setup.sharing);
  const tier = new RedisTier({
    urls: setup.clusterUrls === undefined ? [setup.url ?? server.url] : [...setup.clusterUrls],
    cluster: setup.clusterUrls !== undefined,
    username: setup.username,
    password: setup.password,
    sharing,
    strict: setup.strict ?? false,
    leaseMs: setup.leaseMs ?? 10_000,
    timeoutMs: setup.timeoutMs ?? 1000,
    maxValueBytes: setup.maxValueBytes ?? 1024 * 1024,
    keyPrefix: setup.prefix ?? 't',
    maxLogEntries: 1000,
    dataDir,
    log: (line) => log.push(line),
    maxWaitSliceMs: setup.maxWaitSliceMs,
  });
  const sink = recordingSink();
  if (setup.replayScope !== undefined) sink.replayScope = setup.replayScope;
  for (const [key, found] of setup.local ?? []) sink.local.set(key, found);
  for (const key of setup.held ?? []) sink.held.add(key);
  const failingTops = setup.failingTops;
  if (failingTops !== undefined) {
    const replay = sink.replay;
    sink.replay = async (scope, id, send) => {
      if (failingTops.includes(scope.path[0] ?? '')) throw new Error(`EIO: i/o error, read (${scope.prefix}:${id})`);
      return replay(scope, id, send);
    };
  }
  await tier.attach(sink);
  onTestFinished(() => tier.close());
  // On a busy machine the first connection may take longer than the timeout: attach() then leaves the tier degraded.
  await until(() => tier.status().state !== 'degraded', 'the tier is connected');
  return { tier, sink, log, dataDir };
}

/** A key prefix no other test uses, so that each test has its own tier in the one server. */
function freshPrefix(): string {
  return `t${++prefixes}x${process.pid}`;
}

function record(text: string, extra: Partial<EncodedRecord> = {}): EncodedRecord {
  return { modified: 1_700_000_000_000, value: { encoding: 'utf8', bytes: new TextEncoder().encode(text) }, ...extra };
}

function text(found: { record: EncodedRecord | undefined } | null): string | undefined {
  const bytes = found?.record?.value.bytes;
  return bytes === undefined ? undefined : new TextDecoder().decode(bytes);
}

/** Waits until `condition` holds (polling observable state), failing after a generous bound. */
async function until(condition: () => boolean, what: string, boundMs = 15_000, poll?: () => Promise<void>): Promise<void> {
  const deadline = performance.now() + boundMs;
  for (;;) {
    await poll?.();
    if (condition()) return;
    if (performance.now() > deadline) throw new Error(`Timed out waiting until ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

async function expectCode(promise: Promise<unknown>, code: string): Promise<void> {
  const error = await promise.then(
    () => undefined,
    (caught: unknown) => caught,
  );
  expect(isCacheError(error) ? error.code : error).toBe(code);
}

const pages: Scope = scopeOf(['pages']);

test('a write is read by another machine with its expiry; a delete leaves a fenced tombstone that reads as a miss', async () => {
  const prefix = freshPrefix();
  const a = await makeTier({ prefix });
  const b = await makeTier({ prefix });
  // One clock reading for both: two could differ by a millisecond.
  const nowMs = Date.now();
  await a.tier.write(pages, 'home', record('v1', { expiresAtMs: nowMs + 60_000, staleUntilMs: nowMs + 120_000 }), { sizeBytes: 2 });
  const read = await b.tier.read(pages, 'home');
  expect(text(read)).toBe('v1');
  expect(read!.record).toMatchObject({ modified: 1_700_000_000_000, value: { encoding: 'utf8' } });
  expect(read!.record!.staleUntilMs! - read!.record!.expiresAtMs!).toBe(60_000);
  // Redis evicts it by its stale time: the item's TTL is set.
  expect(Number(await server.cli('PTTL', `{${prefix}:pages}i:pages/:home`))).toBeGreaterThan(100_000);

  await a.tier.delete(pages, 'home');
  expect(text(await b.tier.read(pages, 'home'))).toBeUndefined();
  const tombstone = await server.cli('HGETALL', `{${prefix}:pages}i:pages/:home`);
  // Fenced by the scope's newest number: the counter's own.
  expect(tombstone.split('\n')).toEqual(['d', '1', 'f', await server.cli('GET', `{${prefix}:pages}n`)]);
  expect(Number(await server.cli('PTTL', `{${prefix}:pages}i:pages/:home`))).toBeGreaterThan(0);
  expect(a.tier.status()).toMatchObject({ state: 'connected', sharedWrites: 2, errors: 0 });
  expect(b.tier.status()).toMatchObject({ sharedHits: 1, sharedMisses: 1 });
  // The other machine follows the scope since its read: it heard the delete on the change log and dropped its copy.
  await until(() => b.sink.invalidated.length === 1, 'b heard the delete');
  expect(b.sink.invalidated).toEqual(['pages/:home']);
  expect(a.sink.invalidated).toEqual([]);
});

test('any top-level scope name works: a lone surrogate, braces, the message separator, a percent', async () => {
  const prefix = freshPrefix();
  const a = await makeTier({ prefix });
  const b = await makeTier({ prefix });
  const names = ['\uD800', 'x\uDC00y', 'a}b{c', 'p|q', '%u0041', 'A', '100%'];
  for (const [at, name] of names.entries()) {
    const scope = scopeOf([name]);
    await a.tier.write(scope, 'id', record(`value ${at}`), { sizeBytes: 7 });
    expect(text(await b.tier.read(scope, 'id'))).toBe(`value ${at}`);
  }
  // b follows each of them since its read: a's deletes reach it through the change log, each for its own scope.
  for (const name of names) await a.tier.delete(scopeOf([name]), 'id');
  await until(() => b.sink.invalidated.length === names.length, 'b heard every delete');
  expect(b.sink.invalidated.sort()).toEqual(names.map((name) => `${scopeOf([name]).prefix}:id`).sort());
  for (const name of names) expect(text(await b.tier.read(scopeOf([name]), 'id'))).toBeUndefined();
});

test('a value over maxValueBytes stays local: the shared copy is deleted instead', async () => {
  const prefix = freshPrefix();
  const a = await makeTier({ prefix, maxValueBytes: 4 });
  await a.tier.write(pages, 'big', record('old'), { sizeBytes: 3 });
  await a.tier.write(pages, 'big', record('too large'), { sizeBytes: 9 });
  expect(text(await a.tier.read(pages, 'big'))).toBeUndefined();
  expect(await server.cli('HGET', `{${prefix}:pages}i:pages/:big`, 'd')).toBe('1');
});

test('a plain set supersedes another machine holding the lease: its fenced write is then refused, and the value stays', async () => {
  const prefix = freshPrefix();
  const holder = await makeTier({ prefix });
  const writer = await makeTier({ prefix });
  const grant = await holder.tier.acquire(pages, 'report', { wait: false });
  if (grant === null || grant === 'busy') throw new Error(`no grant: ${grant}`);
  expect(grant.record).toBeUndefined();
  await writer.tier.write(pages, 'report', record('from the plain set'), { sizeBytes: 17 });
  // The holder still believes it holds the lease (it has not expired): Redis refuses the write by its fence.
  expect(grant.lease.held).toBe(true);
  await expectCode(holder.tier.write(pages, 'report', record('computed late'), { lease: grant.lease, sizeBytes: 13 }), 'CACHE_LEASE_LOST');
  expect(grant.lease.held).toBe(false);
  expect(text(await writer.tier.read(pages, 'report'))).toBe('from the plain set');
  expect(holder.tier.status()).toMatchObject({ fencedWrites: 1, leases: 1, sharedWrites: 0 });
  await holder.tier.release(grant.lease);
});

test("a plain delete ends the holder's lease: its write is refused even once the tombstone is gone, and its waiters are woken", async () => {
  const prefix = freshPrefix();
  const holder = await makeTier({ prefix, leaseMs: 30_000 });
  const deleter = await makeTier({ prefix });
  const waiter = await makeTier({ prefix, leaseMs: 30_000 });
  const grant = await holder.tier.acquire(pages, 'gone', { wait: false });
  if (grant === null || grant === 'busy') throw new Error(`no grant: ${grant}`);
  const waiting = waiter.tier.acquire(pages, 'gone', { wait: true });
  await until(() => waiter.tier.waiting() === 1, 'the waiter waits');
  await deleter.tier.delete(pages, 'gone');
  // Woken by the delete's release message, long before the holder's 30 s would run out.
  const next = await waiting;
  if (next === null || next === 'busy') throw new Error(`no grant: ${next}`);
  await waiter.tier.release(next.lease);
  // The tombstone expires (as it does after its TTL): the item is gone, and nothing of it says the holder was superseded.
  await server.cli('PEXPIRE', `{${prefix}:pages}i:pages/:gone`, '1');
  while ((await server.cli('EXISTS', `{${prefix}:pages}i:pages/:gone`)) !== '0') await new Promise((resolve) => setTimeout(resolve, 5));
  await expectCode(holder.tier.write(pages, 'gone', record('late'), { lease: grant.lease, sizeBytes: 4 }), 'CACHE_LEASE_LOST');
  expect(text(await deleter.tier.read(pages, 'gone'))).toBeUndefined();
});

test('a fenced write is refused after the lease ran out while its holder was cut off and another machine took it', async () => {
  const prefix = freshPrefix();
  const proxy = await startTcpProxy({ socketPath: server.socketPath! });
  const holder = await makeTier({ prefix, url: proxy.url, leaseMs: 1500, timeoutMs: 400 });
  const other = await makeTier({ prefix, leaseMs: 1500, timeoutMs: 400 });
  const first = await holder.tier.acquire(pages, 'job', { wait: false });
  if (first === null || first === 'busy') throw new Error(`no grant: ${first}`);
  // The holder's renewals go nowhere: its lease runs out in Redis, and the other machine is granted it.
  proxy.cut('blackhole');
  const second = await other.tier.acquire(pages, 'job', { wait: true });
  if (second === null || second === 'busy') throw new Error(`no grant: ${second}`);
  expect(second.lease.fence).toBeGreaterThan(first.lease.fence);
  await other.tier.write(pages, 'job', record('second'), { lease: second.lease, sizeBytes: 6 });
  proxy.restore();
  await until(() => holder.tier.status().state === 'connected', 'the holder is connected again');
  await expectCode(holder.tier.write(pages, 'job', record('first'), { lease: first.lease, sizeBytes: 5 }), 'CACHE_LEASE_LOST');
  expect(text(await other.tier.read(pages, 'job'))).toBe('second');
  expect(holder.tier.status().fencedWrites).toBe(1);
  await other.tier.release(second.lease);
});

test('a fenced write is refused once the scope was cleared after the grant', async () => {
  const prefix = freshPrefix();
  const a = await makeTier({ prefix });
  const grant = await a.tier.acquire(pages, 'x', { wait: false });
  if (grant === null || grant === 'busy') throw new Error(`no grant: ${grant}`);
  const b = await makeTier({ prefix });
  await b.tier.clear(pages);
  await expectCode(a.tier.write(pages, 'x', record('stale'), { lease: grant.lease, sizeBytes: 5 }), 'CACHE_LEASE_LOST');
  expect(text(await b.tier.read(pages, 'x'))).toBeUndefined();
});

/** The write script's reply, as redis-cli prints it, for a set of `id` in `pages` fenced by the number `fence` (no token). */
async function writeByNumber(keys: TierKeys, id: string, fence: number): Promise<string[]> {
  const key = itemKey(pages, id);
  const fields = generationFields(pages);
  const reply = await server.cli(
    'EVAL', WRITE_SCRIPT.source, '6',
    keys.item(key), keys.fenceCounter('pages'), keys.generations('pages'), keys.leases('pages'), keys.changeLog('pages'), keys.leaseExpiries('pages'),
    'an origin', key, keys.channel, encodeTopName('pages'), '1000', 's', '', String(fence), String(fields.length), ...fields,
    'written through', 'utf8', '1700000000000', '', '', String(Date.now() + 60_000),
  );
  return reply.split('\n');
}

test('a write fenced by a number (a getset write-through) is refused for a newer lease, write or clear; else it writes with that fence and ends its lease', async () => {
  const prefix = freshPrefix();
  const keys = new TierKeys(prefix);
  const a = await makeTier({ prefix, leaseMs: 30_000 });
  const b = await makeTier({ prefix, leaseMs: 30_000 });
  const grantOf = async (tier: RedisTier, id: string) => {
    const grant = await tier.acquire(pages, id, { wait: false });
    if (grant === null || grant === 'busy') throw new Error(`no grant: ${grant}`);
    return grant;
  };
  const byNumber = (id: string, fence: number) => writeByNumber(keys, id, fence);

  // A's lease ended (released), B holds a newer one: refused; once B wrote under it, still refused.
  const older = await grantOf(a.tier, 'older');
  await a.tier.release(older.lease);
  const newer = await grantOf(b.tier, 'older');
  expect(await byNumber('older', older.lease.fence)).toEqual(['0', 'newer lease']);
  await b.tier.write(pages, 'older', record('by B'), { lease: newer.lease, sizeBytes: 4 });
  await b.tier.release(newer.lease);
  expect(await byNumber('older', older.lease.fence)).toEqual(['0', 'newer write']);
  expect(text(await a.tier.read(pages, 'older'))).toBe('by B');

  // A clear of the scope came after the grant: refused.
  const cleared = await grantOf(a.tier, 'cleared');
  await a.tier.release(cleared.lease);
  await b.tier.clear(pages);
  expect(await byNumber('cleared', cleared.lease.fence)).toEqual(['0', 'scope cleared']);

  // Nothing newer: written with that fence (the counter untouched), and the lease of that fence, still held, ends.
  const mine = await grantOf(a.tier, 'mine');
  const counter = await server.cli('GET', keys.fenceCounter('pages'));
  const [taken, fence] = await byNumber('mine', mine.lease.fence);
  expect([taken, fence]).toEqual(['1', String(mine.lease.fence)]);
  expect(await server.cli('GET', keys.fenceCounter('pages'))).toBe(counter);
  expect(await server.cli('HEXISTS', keys.leases('pages'), itemKey(pages, 'mine'))).toBe('0');
  expect(await server.cli('HGET', keys.item(itemKey(pages, 'mine')), 'f')).toBe(String(mine.lease.fence));
  expect(text(await b.tier.read(pages, 'mine'))).toBe('written through');
});

test("a scope's fencing numbers are never below Redis's time in microseconds (above any a lost or rolled-back counter handed out), and increase", async () => {
  const prefix = freshPrefix();
  const keys = new TierKeys(prefix);
  const a = await makeTier({ prefix });
  const timeOf = async (): Promise<number> => {
    const [seconds, micros] = (await server.cli('TIME')).split('\n').map(Number);
    return seconds! * 1_000_000 + micros!;
  };
  const before = await timeOf();
  await a.tier.write(pages, 'one', record('one'), { sizeBytes: 3 });
  const first = Number(await server.cli('GET', keys.fenceCounter('pages')));
  expect(first).toBeGreaterThan(before);
  expect(first).toBeLessThan(Number.MAX_SAFE_INTEGER);
  // A counter gone back (a failover to a replica that lagged): the next number is still above every one handed out.
  await server.cli('SET', keys.fenceCounter('pages'), '5');
  const grant = await a.tier.acquire(pages, 'two', { wait: false });
  if (grant === null || grant === 'busy') throw new Error(`no grant: ${grant}`);
  expect(grant.lease.fence).toBeGreaterThan(first);
  // The lease's number is kept whole in its field (Lua's own conversion keeps 14 digits).
  await a.tier.write(pages, 'two', record('by the lease'), { lease: grant.lease, sizeBytes: 12 });
  await a.tier.release(grant.lease);
  expect(await server.cli('HGET', keys.item(itemKey(pages, 'two')), 'f')).toBe(String(grant.lease.fence));
});

test("a fencing counter gone back (a failover to a replica that lagged): the number handed out again is above the old one, and a write-through fenced by the old one is refused", async () => {
  const prefix = freshPrefix();
  const keys = new TierKeys(prefix);
  const a = await makeTier({ prefix, leaseMs: 30_000 });
  const b = await makeTier({ prefix, leaseMs: 30_000 });
  const held = await a.tier.acquire(pages, 'x', { wait: false });
  if (held === null || held === 'busy') throw new Error(`no grant: ${held}`);
  // The replica promoted had not received A's lease nor its number (the tier's identity is there: no loss is seen).
  await server.cli('SET', keys.fenceCounter('pages'), String(held.lease.fence - 1));
  await server.cli('HDEL', keys.leases('pages'), itemKey(pages, 'x'));
  await server.cli('ZREM', keys.leaseExpiries('pages'), itemKey(pages, 'x'));
  const taken = await b.tier.acquire(pages, 'x', { wait: false });
  if (taken === null || taken === 'busy') throw new Error(`no grant: ${taken}`);
  await b.tier.write(pages, 'x', record('by B, newer'), { lease: taken.lease, sizeBytes: 11 });
  await b.tier.release(taken.lease);
  // A's write, kept across the cut, is written through fenced by its old number. Before: B's lease got the same
  // number, and A's write-through overwrote B's (`expected [ '1', … ] to deeply equal [ '0', 'newer write' ]`).
  expect(await writeByNumber(keys, 'x', held.lease.fence)).toEqual(['0', 'newer write']);
  expect(taken.lease.fence).toBeGreaterThan(held.lease.fence);
  expect(text(await a.tier.read(pages, 'x'))).toBe('by B, newer');
});

test("a write fenced by a number above its scope's counter (kept from a Redis that lost its data) goes as fenced by 0: with a new number when nothing of the item came since, else refused", async () => {
  const prefix = freshPrefix();
  const keys = new TierKeys(prefix);
  const a = await makeTier({ prefix });
  for (const id of ['one', 'two']) await a.tier.write(pages, id, record(id), { sizeBytes: 3 });
  const counter = Number(await server.cli('GET', keys.fenceCounter('pages')));
  const kept = counter + 1_000_000_000;
  // Written with a new number, not at the kept one: a lease granted next writes.
  const [taken, fence] = await writeByNumber(keys, 'kept', kept);
  expect(taken).toBe('1');
  expect(Number(fence)).toBeGreaterThan(counter);
  expect(Number(fence)).toBeLessThan(kept);
  const grant = await a.tier.acquire(pages, 'kept', { wait: false });
  if (grant === null || grant === 'busy') throw new Error(`no grant: ${grant}`);
  expect(grant.lease.fence).toBeGreaterThan(Number(fence));
  await a.tier.write(pages, 'kept', record('by a lease'), { lease: grant.lease, sizeBytes: 10 });
  await a.tier.release(grant.lease);
  // The item was written since: refused, as any write fenced by 0.
  const above = Number(await server.cli('GET', keys.fenceCounter('pages'))) + 1_000_000_000;
  expect(await writeByNumber(keys, 'kept', above)).toEqual(['0', 'newer write']);
  expect(await writeByNumber(keys, 'one', above)).toEqual(['0', 'newer write']);
  expect(text(await a.tier.read(pages, 'kept'))).toBe('by a lease');
});

test('a clear bumps a generation without scanning: items of the scope read as misses, others as hits', async () => {
  const prefix = freshPrefix();
  const a = await makeTier({ prefix, sharing: { other: 'shared' } });
  const b = await makeTier({ prefix });
  const drafts = scopeOf(['pages', 'drafts']);
  const published = scopeOf(['pages', 'published']);
  for (const id of ['a', 'b', 'c']) await a.tier.write(drafts, id, record(`draft ${id}`), { sizeBytes: 7 });
  await a.tier.write(published, 'a', record('published a'), { sizeBytes: 11 });
  await a.tier.write(ROOT_SCOPE, 'root item', record('root'), { sizeBytes: 4 });
  await a.tier.write(scopeOf(['other']), 'o', record('other'), { sizeBytes: 5 });
  await server.cli('CONFIG', 'RESETSTAT');

  await b.tier.clear(drafts);
  for (const id of ['a', 'b', 'c']) expect(text(await a.tier.read(drafts, id))).toBeUndefined();
  expect(text(await a.tier.read(published, 'a'))).toBe('published a');
  // The items are still there, under the old generation: nothing was scanned or deleted one by one.
  expect(await server.cli('EXISTS', `{${prefix}:pages}i:pages/drafts/:a`)).toBe('1');
  await until(() => a.sink.dropped.includes('pages/drafts/'), 'a dropped the cleared scope');

  // The root scope: every top-level scope written to or named, each by its own script call.
  await b.tier.clear(ROOT_SCOPE);
  expect(text(await a.tier.read(published, 'a'))).toBeUndefined();
  expect(text(await a.tier.read(ROOT_SCOPE, 'root item'))).toBeUndefined();
  expect(text(await a.tier.read(scopeOf(['other']), 'o'))).toBeUndefined();
  const stats = await server.cli('INFO', 'commandstats');
  // (A clear of a whole top-level scope deletes its old clear records, `g` and `t`, but never an item.)
  expect(stats).not.toMatch(/cmdstat_(scan|keys|hscan|sscan|unlink):/);
  expect(await server.cli('EXISTS', `{${prefix}:pages}i:pages/published/:a`, `{${prefix}:other}i:other/:o`)).toBe('2');
  expect(stats).toMatch(/cmdstat_evalsha:/);
  expect(await server.cli('SMEMBERS', `${prefix}:scopes`)).toMatch(/pages/);
});

test('the clear records in g stay bounded: a top-level clear replaces them all, old ones are pruned, and no cleared item comes back', async () => {
  const prefix = freshPrefix();
  const a = await makeTier({ prefix });
  const tag = `{${prefix}:pages}`;
  const runs = Array.from({ length: 40 }, (_, n) => scopeOf(['pages', `run${n}`]));
  for (const scope of runs) {
    await a.tier.write(scope, 'x', record('before'), { sizeBytes: 6 });
    await a.tier.clear(scope);
  }
  await a.tier.write(runs[0]!, 'y', record('after its clear'), { sizeBytes: 15 });
  expect(Number(await server.cli('HLEN', `${tag}g`))).toBe(40);
  // A clear of the whole top-level scope: one record left, and what each sub-scope's clear hid stays hidden.
  await a.tier.clear(pages);
  expect(await server.cli('HKEYS', `${tag}g`)).toBe('pages/');
  for (const scope of runs) expect(text(await a.tier.read(scope, 'x'))).toBeUndefined();
  expect(text(await a.tier.read(runs[0]!, 'y'))).toBeUndefined();
  await a.tier.write(runs[1]!, 'z', record('after the top clear'), { sizeBytes: 19 });
  expect(text(await a.tier.read(runs[1]!, 'z'))).toBe('after the top clear');

  // A sub-scope cleared once: its record goes once it is older than any shared copy can be (its time set back here).
  const once = scopeOf(['pages', 'once']);
  await a.tier.write(once, 'old', record('old'), { sizeBytes: 3 });
  await a.tier.clear(once);
  await a.tier.write(once, 'new', record('new'), { sizeBytes: 3 });
  expect(await server.cli('HEXISTS', `${tag}g`, 'pages/once/')).toBe('1');
  const monthAgoMs = Number((await server.cli('TIME')).split('\n')[0]) * 1000 - 32 * 24 * 3600 * 1000;
  await server.cli('ZADD', `${tag}t`, String(monthAgoMs), 'pages/once/');
  await a.tier.clear(scopeOf(['pages', 'other']));
  expect(await server.cli('HEXISTS', `${tag}g`, 'pages/once/')).toBe('0');
  expect(text(await a.tier.read(once, 'new'))).toBe('new');
  // No shared copy outlives that: a TTL a year away is capped at 30 days.
  await a.tier.write(pages, 'far', record('far', { expiresAtMs: Date.now() + 365 * 24 * 3600 * 1000 }), { sizeBytes: 3 });
  expect(Number(await server.cli('PTTL', `${tag}i:pages/:far`))).toBeLessThanOrEqual(30 * 24 * 3600 * 1000);
  // And none of the tier's own structures has a TTL, so that no eviction policy drops a fence or a lease.
  for (const key of ['n', 'g', 't']) expect(await server.cli('PTTL', `${tag}${key}`)).toBe('-1');
});

test('a whole clear where g has a root record but t has no time for it keeps the clear: items written before stay misses', async () => {
  const prefix = freshPrefix();
  const a = await makeTier({ prefix });
  const tag = `{${prefix}:pages}`;
  const sub = scopeOf(['pages', 'sub']);
  await a.tier.write(pages, 'x', record('before'), { sizeBytes: 6 });
  await a.tier.write(sub, 'y', record('before'), { sizeBytes: 6 });
  await a.tier.clear(sub);
  // A root record (field '') with no time in t, older than every item: what a partly lost or hand-edited state leaves.
  await server.cli('HSET', `${tag}g`, '', '0');
  expect(await server.cli('ZSCORE', `${tag}t`, '')).toBe('');
  await a.tier.clear(pages);
  expect(text(await a.tier.read(pages, 'x'))).toBeUndefined();
  expect(text(await a.tier.read(sub, 'y'))).toBeUndefined();
  expect(await server.cli('HEXISTS', `${tag}g`, 'pages/')).toBe('1');
  expect(await server.cli('HEXISTS', `${tag}g`, '')).toBe('1');
  expect(a.tier.status().errors).toBe(0);
});

test("the leases of a holder that never came back are removed by later script calls, without a scan", async () => {
  const prefix = freshPrefix();
  const proxy = await startTcpProxy({ socketPath: server.socketPath! });
  const holder = await makeTier({ prefix, url: proxy.url, leaseMs: 1500, timeoutMs: 400 });
  const other = await makeTier({ prefix, leaseMs: 1500, timeoutMs: 400 });
  const tag = `{${prefix}:pages}`;
  const ids = Array.from({ length: 20 }, (_, n) => `job${n}`);
  for (const id of ids) {
    const grant = await holder.tier.acquire(pages, id, { wait: false });
    if (grant === null || grant === 'busy') throw new Error(`no grant: ${grant}`);
  }
  expect(await server.cli('HLEN', `${tag}l`)).toBe('20');
  // The holder is cut off for good: its renewals go nowhere, and its leases run out in Redis.
  proxy.cut('blackhole');
  await until(() => holder.tier.status().state === 'degraded', 'the holder is cut off');
  const last = await other.tier.acquire(pages, ids.at(-1)!, { wait: true });
  if (last === null || last === 'busy') throw new Error(`no grant: ${last}`);
  await other.tier.release(last.lease);
  await server.cli('CONFIG', 'RESETSTAT');
  for (const id of ['a', 'b']) {
    const grant = await other.tier.acquire(pages, id, { wait: false });
    if (grant === null || grant === 'busy') throw new Error(`no grant: ${grant}`);
    await other.tier.release(grant.lease);
  }
  // A lease the holder renewed just before the cut may outlive the last one by up to a renewal period: later script
  // calls remove it too.
  let leases = await server.cli('HLEN', `${tag}l`);
  const poll = setInterval(() => {
    void other.tier.acquire(pages, 'later', { wait: false }).then(async (grant) => {
      if (grant !== null && grant !== 'busy') await other.tier.release(grant.lease);
      leases = await server.cli('HLEN', `${tag}l`);
    }, () => {});
  }, 100);
  await until(() => leases === '0', 'the leases are gone').finally(() => clearInterval(poll));
  expect(await server.cli('ZCARD', `${tag}x`)).toBe('0');
  expect(await server.cli('INFO', 'commandstats')).not.toMatch(/cmdstat_(scan|keys|hscan|zscan|hkeys):/);
  for (const key of ['l', 'x']) expect(await server.cli('PTTL', `${tag}${key}`)).not.toMatch(/^\d/);
});

test('a waiter on another machine is woken by the release, long before the lease would run out', async () => {
  const prefix = freshPrefix();
  // The waiter asks again only every minute and the lease is a minute long: only the release message can wake it in time.
  const holder = await makeTier({ prefix, leaseMs: 60_000 });
  const waiter = await makeTier({ prefix, leaseMs: 60_000, maxWaitSliceMs: 60_000 });
  const held = await holder.tier.acquire(pages, 'compute', { wait: false });
  if (held === null || held === 'busy') throw new Error(`no grant: ${held}`);
  expect(await waiter.tier.acquire(pages, 'compute', { wait: false })).toBe('busy');
  const waiting = waiter.tier.acquire(pages, 'compute', { wait: true });
  await until(() => waiter.tier.waiting() === 1, 'the second machine waits');
  await holder.tier.write(pages, 'compute', record('computed once'), { lease: held.lease, sizeBytes: 13 });
  const releasedMs = performance.now();
  await holder.tier.release(held.lease);
  // A generous bound for a busy machine, and a third of what the waiter's own timer would take.
  let timer: NodeJS.Timeout | undefined;
  const granted = await Promise.race([
    waiting,
    new Promise<'not woken'>((resolve) => (timer = setTimeout(() => resolve('not woken'), 20_000))),
  ]).finally(() => clearTimeout(timer));
  if (granted === null || granted === 'busy' || granted === 'not woken') throw new Error(`no grant: ${granted}`);
  const wokenMs = performance.now() - releasedMs;
  expect(granted.lease.fence).toBeGreaterThan(held.lease.fence);
  expect(text(granted)).toBe('computed once');
  expect(waiter.tier.waiting()).toBe(0);
  await waiter.tier.release(granted.lease);
  expect(await server.cli('HLEN', `{${prefix}:pages}l`)).toBe('0');
  process.stderr.write(`a waiter asking again every 60 s was granted ${wokenMs.toFixed(0)} ms after the release\n`);
});

test("a lease whose release did not reach Redis is taken over by the same daemon's next getset, not waited for", async () => {
  const prefix = freshPrefix();
  const proxy = await startTcpProxy({ socketPath: server.socketPath! });
  const a = await makeTier({ prefix, url: proxy.url, leaseMs: 30_000, timeoutMs: 500 });
  const other = await makeTier({ prefix, leaseMs: 30_000 });
  const first = await a.tier.acquire(pages, 'orphan', { wait: false });
  if (first === null || first === 'busy') throw new Error(`no grant: ${first}`);
  proxy.cut('reset');
  await until(() => a.tier.status().state === 'degraded', 'the tier is degraded');
  await a.tier.release(first.lease);
  proxy.restore();
  await until(() => a.tier.status().state !== 'degraded', 'the tier is back');
  // Redis still has the lease, for its 30 s: another machine finds it busy, this daemon takes it over.
  expect(await other.tier.acquire(pages, 'orphan', { wait: false })).toBe('busy');
  const second = await a.tier.acquire(pages, 'orphan', { wait: false });
  if (second === null || second === 'busy') throw new Error(`no grant: ${second}`);
  expect(second.lease.fence).toBeGreaterThan(first.lease.fence);
  await a.tier.release(second.lease);
  const third = await other.tier.acquire(pages, 'orphan', { wait: false });
  if (third === null || third === 'busy') throw new Error(`no grant: ${third}`);
  await other.tier.release(third.lease);
});

test('an aborted wait rejects with the signal reason, and close ends a wait with null', async () => {
  const prefix = freshPrefix();
  const holder = await makeTier({ prefix });
  const waiter = await makeTier({ prefix });
  const held = await holder.tier.acquire(pages, 'k', { wait: false });
  if (held === null || held === 'busy') throw new Error(`no grant: ${held}`);
  const controller = new AbortController();
  const aborted = waiter.tier.acquire(pages, 'k', { wait: true, signal: controller.signal });
  await until(() => waiter.tier.waiting() === 1, 'the waiter waits');
  const reason = new Error('cancelled');
  controller.abort(reason);
  await expect(aborted).rejects.toBe(reason);
  const closing = waiter.tier.acquire(pages, 'k', { wait: true });
  await until(() => waiter.tier.waiting() === 1, 'the waiter waits again');
  await waiter.tier.close();
  expect(await closing).toBeNull();
  await holder.tier.release(held.lease);
});

test('a user who may only read: writes are refused and counted, reads still work, and the tier stays connected', async () => {
  const prefix = 't';
  await server.cli('DEL', `{t:pages}i:pages/:r`);
  const writer = await makeTier({ prefix });
  await writer.tier.write(pages, 'r', record('readable'), { sizeBytes: 8 });
  const reader = await makeTier({ prefix, username: 'reader', password: 'pw' });
  expect(text(await reader.tier.read(pages, 'r'))).toBe('readable');
  await reader.tier.write(pages, 'r', record('refused'), { sizeBytes: 7 });
  expect(reader.tier.status()).toMatchObject({ refused: 1, errors: 1, sharedWrites: 0 });
  expect(reader.tier.status().state).not.toBe('degraded');
  expect(reader.log.some((line) => line.includes('NOPERM'))).toBe(true);
  const strict = await makeTier({ prefix, username: 'reader', password: 'pw', strict: true });
  await expectCode(strict.tier.write(pages, 'r', record('refused'), { sizeBytes: 7 }), 'CACHE_TIER_UNAVAILABLE');
  expect(text(await reader.tier.read(pages, 'r'))).toBe('readable');
});

test('Redis stopped (no reset ever comes): calls answer within the timeout, the tier is degraded, then restored', async () => {
  const own = await startRedisServer({ unixSocket: true });
  const timeoutMs = 500;
  const { tier, log } = await makeTier({ url: own.url, timeoutMs, prefix: 's' });
  const strict = await makeTier({ url: own.url, timeoutMs, prefix: 's', strict: true });
  await tier.write(pages, 'kept', record('before'), { sizeBytes: 6 });
  process.kill(own.pid, 'SIGSTOP');
  onTestFinished(() => {
    process.kill(own.pid, 'SIGCONT');
  });
  const timed = async <R>(call: () => Promise<R>): Promise<{ result: R; ms: number }> => {
    const startedMs = performance.now();
    const result = await call();
    return { result, ms: performance.now() - startedMs };
  };
  // The first call waits out the timeout; the bound is generous for a busy machine.
  const first = await timed(() => tier.read(pages, 'kept'));
  expect(first.result).toBeNull();
  expect(first.ms).toBeLessThan(timeoutMs + 2000);
  // A timeout fails that call alone; the PING it sends times out too, and that degrades the tier.
  // (Other commands under way meanwhile, the change log's reads, may time out and be counted too.)
  await until(() => tier.status().state === 'degraded', 'degraded', 3 * timeoutMs + 2000);
  expect(tier.status().errors).toBeGreaterThanOrEqual(1);
  expect(tier.status().lastError).toMatch(/timed out/);
  // Then every call is answered at once, without waiting for Redis.
  const write = await timed(() => tier.write(pages, 'kept', record('during'), { sizeBytes: 6 }));
  expect(write.ms).toBeLessThan(timeoutMs + 2000);
  expect((await timed(() => tier.acquire(pages, 'kept', { wait: true }))).result).toBeNull();
  expect(tier.status().localFallbacks).toBe(1);
  // (A write that timed out may still be done once Redis runs again: another item, so as not to blur what is checked.)
  await expectCode(strict.tier.write(pages, 'strict', record('during'), { sizeBytes: 6 }), 'CACHE_TIER_UNAVAILABLE');
  // The background PING times out too: the client is made again.
  await until(() => log.some((line) => line.includes('PING')) || tier.status().lastError!.includes('PING'), 'the PING timed out');

  process.kill(own.pid, 'SIGCONT');
  const continuedMs = performance.now();
  await until(() => tier.status().state === 'connected', 'the tier is connected again');
  const restoredMs = performance.now() - continuedMs;
  expect(text(await tier.read(pages, 'kept'))).toBe('before');
  expect(log.filter((line) => line.includes('again')).length).toBeGreaterThanOrEqual(1);
  process.stderr.write(
    `tier with Redis stopped (timeout ${timeoutMs} ms): first read answered null in ${first.ms.toFixed(0)} ms, a write while degraded in ` +
      `${write.ms.toFixed(1)} ms; connected again ${restoredMs.toFixed(0)} ms after SIGCONT\n`,
  );
});

test("a getset waiting for another machine's lease falls back to the local lock once Redis stops, not at the lease's end", async () => {
  const own = await startRedisServer({ unixSocket: true });
  const timeoutMs = 500;
  const holder = await makeTier({ url: own.url, timeoutMs, leaseMs: 60_000, prefix: 'w' });
  const waiter = await makeTier({ url: own.url, timeoutMs, leaseMs: 60_000, prefix: 'w' });
  const held = await holder.tier.acquire(pages, 'compute', { wait: false });
  if (held === null || held === 'busy') throw new Error(`no grant: ${held}`);
  const waiting = waiter.tier.acquire(pages, 'compute', { wait: true });
  await until(() => waiter.tier.waiting() === 1, 'the second machine waits');
  process.kill(own.pid, 'SIGSTOP');
  onTestFinished(() => {
    process.kill(own.pid, 'SIGCONT');
  });
  const stoppedMs = performance.now();
  // Without the wake on degrading, the waiter slept until the holder's 60 s lease ran out.
  expect(await waiting).toBeNull();
  expect(performance.now() - stoppedMs).toBeLessThan(30_000);
  await until(() => waiter.tier.status().state === 'degraded', 'degraded');
  expect(waiter.tier.status()).toMatchObject({ state: 'degraded', localFallbacks: 1 });
  expect(waiter.tier.waiting()).toBe(0);
});

test('an acquire that timed out but ran in Redis anyway is released as soon as Redis answers again: other machines do not wait out its lease', async () => {
  const own = await startRedisServer({ unixSocket: true });
  const prefix = 'o';
  const a = await makeTier({ url: own.url, timeoutMs: 500, leaseMs: 30_000, prefix });
  const b = await makeTier({ url: own.url, timeoutMs: 500, leaseMs: 30_000, prefix });
  await own.cli('SET', `{${prefix}:pages}n`, '0');
  process.kill(own.pid, 'SIGSTOP');
  onTestFinished(() => {
    process.kill(own.pid, 'SIGCONT');
  });
  // The acquire reaches Redis's socket and times out: a's getset goes on under its local lock alone.
  expect(await a.tier.acquire(pages, 'job', { wait: false })).toBeNull();
  // One timeout fails the call alone: the PING it sends decides, and finds Redis stopped.
  await until(() => a.tier.status().state === 'degraded', 'a degraded');
  process.kill(own.pid, 'SIGCONT');
  const continuedMs = performance.now();
  // Redis runs the acquire it had received: the fence counter, set to 0 before, says so (nothing else takes a fence).
  let fence = '0';
  const poll = setInterval(() => void own.cli('GET', `{${prefix}:pages}n`).then((value) => (fence = value), () => {}), 20);
  await until(() => fence !== '0', 'Redis ran the timed-out acquire').finally(() => clearInterval(poll));
  // b may have found Redis stopped too (its change log asks it): it waits for its lease only once connected again.
  await until(() => b.tier.status().state !== 'degraded', 'b is connected again');
  let timer: NodeJS.Timeout | undefined;
  const granted = await Promise.race([
    b.tier.acquire(pages, 'job', { wait: true }),
    new Promise<'still waiting'>((resolve) => (timer = setTimeout(() => resolve('still waiting'), 10_000))),
  ]).finally(() => clearTimeout(timer));
  if (granted === null || granted === 'busy' || granted === 'still waiting') throw new Error(`no grant: ${granted}`);
  const grantedMs = performance.now() - continuedMs;
  expect(granted.lease.fence).toBeGreaterThan(Number(fence));
  await b.tier.release(granted.lease);
  process.stderr.write(`after a timed-out acquire (30 s lease), another machine was granted ${grantedMs.toFixed(0)} ms after SIGCONT\n`);
});

test('acquires that time out while the tier stays up are released one pass at a time: one RELEASE each, not a pass over all per orphan', async () => {
  const own = await startRedisServer({ unixSocket: true });
  const prefix = 'r';
  const a = await makeTier({ url: own.url, timeoutMs: 1000, leaseMs: 30_000, prefix });
  const ids = Array.from({ length: 10 }, (_, n) => `job${n}`);
  await own.cli('CONFIG', 'RESETSTAT');
  // Redis holds every command for 1.6 s, then answers: the acquires time out, the PING their timeout sends is
  // answered in time, and the tier stays up. Redis runs the acquires all the same.
  await own.cli('CLIENT', 'PAUSE', '1600', 'ALL');
  const grants = await Promise.all(ids.map((id) => a.tier.acquire(pages, id, { wait: false })));
  expect(grants.filter((grant) => grant === null).length).toBeGreaterThan(0);
  let scripts = 0;
  let leases = '';
  const poll = setInterval(() => {
    void own.cli('INFO', 'commandstats').then((value) => (scripts = Number(/cmdstat_evalsha:calls=(\d+),/.exec(value)?.[1] ?? 0)), () => {});
    void own.cli('HLEN', '{r:pages}l').then((value) => (leases = value), () => {});
  }, 50);
  // Redis runs the acquires it had received before anything sent after them.
  await until(() => scripts >= ids.length, 'Redis ran the acquires');
  await until(() => leases === '0', 'every lease whose grant was not heard of is released').finally(() => clearInterval(poll));
  const calls = Number(/cmdstat_evalsha:calls=(\d+),/.exec(await own.cli('INFO', 'commandstats'))?.[1]);
  const releases = calls - ids.length;
  expect(releases).toBeGreaterThanOrEqual(1);
  // One for each at best; a pass per orphan over all of them was 1 + 2 + ... + 10 = 55.
  expect(releases).toBeLessThanOrEqual(2 * ids.length);
  // The paused Redis may have sent the change log into a catch-up pass meanwhile (a read of it timed out too): the
  // tier ends connected once it is done (CI saw 'catching-up' at this point once, on a busy machine).
  await until(() => a.tier.status().state === 'connected', 'the tier is connected');
  process.stderr.write(`${ids.length} acquires timed out while Redis paused 1.6 s (timeout 1 s): ${releases} RELEASE scripts ran\n`);
});

/** `cmdstat_<command>`'s calls, failed and rejected calls, from `INFO commandstats`. */
async function commandStats(own: RedisServer, command: string): Promise<{ calls: number; failed: number; rejected: number }> {
  const found = new RegExp(`cmdstat_${command}:calls=(\\d+),.*rejected_calls=(\\d+),failed_calls=(\\d+)`).exec(await own.cli('INFO', 'commandstats'));
  return { calls: Number(found?.[1] ?? 0), rejected: Number(found?.[2] ?? 0), failed: Number(found?.[3] ?? 0) };
}

/**
 * Makes Redis refuse every write with MISCONF, as when it cannot write its snapshot (save points set, a snapshot
 * failed); PINGs too, but no command times out: the tier stays up. Resolves to what lets it write again.
 */
async function cannotPersist(own: RedisServer): Promise<() => Promise<void>> {
  const dir = (await own.cli('CONFIG', 'GET', 'dir')).split('\n')[1]!;
  const bgsaveStatus = async () => /rdb_last_bgsave_status:(\w+)/.exec(await own.cli('INFO', 'persistence'))?.[1];
  let status: string | undefined;
  await own.cli('CONFIG', 'SET', 'save', '3600 1', 'stop-writes-on-bgsave-error', 'yes', 'dir', '/proc');
  await own.cli('BGSAVE');
  await until(() => status === 'err', 'the snapshot failed', 15_000, async () => void (status = await bgsaveStatus()));
  return async () => {
    await own.cli('CONFIG', 'SET', 'dir', dir);
    await own.cli('BGSAVE');
    await until(() => status === 'ok', 'a snapshot went through', 15_000, async () => void (status = await bgsaveStatus()));
  };
}

test('a release of an unheard-of grant that failed while the tier stayed up (MISCONF) is tried again, and goes through once Redis can write', async () => {
  // Redis must accept CONFIG SET dir (a protected setting) for cannotPersist.
  const own = await startRedisServer({ unixSocket: true, config: ['enable-protected-configs yes'] });
  const a = await makeTier({ url: own.url, prefix: 'q' });
  // An expired lease in the expiry index: every lease script prunes it (a write), so that the release writes too.
  await own.cli('ZADD', '{q:pages}x', '1', 'gone');
  const recover = await cannotPersist(own);
  await own.cli('CONFIG', 'RESETSTAT');
  // Refused: Redis ran nothing, but the daemon cannot tell an error reply from a grant it did not hear of.
  expect(await a.tier.acquire(pages, 'job', { wait: false })).toBeNull();
  let stats = { calls: 0, failed: 0, rejected: 0 };
  const poll = async () => void (stats = await commandStats(own, 'evalsha'));
  // The acquire, its release, and the release tried again, each refused (a script's write fails: a failed call) while
  // the tier stays up.
  await until(() => stats.rejected + stats.failed >= 3, 'the release was tried again', 15_000, poll);
  expect(stats.calls).toBe(stats.failed);
  expect(a.tier.status().state).not.toBe('degraded');
  await recover();
  await until(() => stats.calls > stats.failed, 'the release went through', 15_000, poll);
  await until(() => a.tier.status().state === 'connected', 'the tier is connected');
});

test('a release of an unheard-of grant that Redis answers with an error is given up and logged, not tried again every second', async () => {
  const own = await startRedisServer({ unixSocket: true });
  const a = await makeTier({ url: own.url, prefix: 'q' });
  // The leases' hash is a string: the acquire fails (an error reply: it may have been a grant, as far as the daemon
  // knows), and so does its release. Redis answers: the tier stays up.
  await own.cli('SET', '{q:pages}l', 'not a hash');
  await own.cli('CONFIG', 'RESETSTAT');
  expect(await a.tier.acquire(pages, 'job', { wait: false })).toBeNull();
  // Before the fix, the release was tried again every second, forever (while the tier is up).
  await until(() => a.log.some((line) => line.includes('is not released')), 'the release is given up, logged');
  // Nothing is left to try again: the retry timer runs only while an unheard-of grant waits to be released.
  expect(a.tier.orphans()).toBe(0);
  expect(await commandStats(own, 'evalsha')).toMatchObject({ calls: 2, failed: 2 });
  await own.cli('DEL', '{q:pages}l');
  // A later grant and release of the same item are the only scripts Redis runs after them: no release of the given-up
  // grant went in between.
  const grant = await a.tier.acquire(pages, 'job', { wait: false });
  if (grant === null || grant === 'busy') throw new Error(`no grant: ${grant}`);
  await a.tier.release(grant.lease);
  expect(await commandStats(own, 'evalsha')).toMatchObject({ calls: 4, failed: 2 });
  expect(a.tier.orphans()).toBe(0);
  expect(a.tier.status().state).toBe('connected');
});

test('the scripts are loaded at connect: many concurrent first writes run by EVALSHA, none falls back to EVAL', async () => {
  const own = await startRedisServer({ unixSocket: true });
  const a = await makeTier({ url: own.url, prefix: 'n' });
  await Promise.all(Array.from({ length: 32 }, (_, n) => a.tier.write(scopeOf([`scope${n % 4}`]), `id${n}`, record(`v${n}`), { sizeBytes: 3 })));
  const grant = await a.tier.acquire(pages, 'job', { wait: false });
  if (grant === null || grant === 'busy') throw new Error(`no grant: ${grant}`);
  await a.tier.release(grant.lease);
  await a.tier.clear(pages);
  const stats = await own.cli('INFO', 'commandstats');
  expect(stats).toMatch(/cmdstat_evalsha:calls=35,/);
  expect(stats).not.toMatch(/cmdstat_eval:/);
  expect(stats).toMatch(/cmdstat_evalsha:.*failed_calls=0/);
  expect(a.tier.status()).toMatchObject({ sharedWrites: 33, errors: 0 });
});

test('on a Redis Cluster: values come back byte for byte, and scripts fence, clear and hand leases over in scopes on different masters', async () => {
  const cluster = await startRedisCluster({ masters: 3 });
  const a = await makeTier({ clusterUrls: cluster.urls });
  const b = await makeTier({ clusterUrls: cluster.urls });
  const bytes = new Uint8Array([0, 1, 0xfe, 0xff, 0x80, 10, 13]);
  const binary: EncodedRecord = { modified: 5, value: { encoding: 'bytes', bytes } };
  const scopes = ['alpha', 'beta', 'gamma', 'delta', 'epsilon', 'zeta'].map((name) => scopeOf([name]));
  // Their hash tags fall on more than one master.
  const slots = new Set(await Promise.all(scopes.map((scope) => cluster.cli('CLUSTER', 'KEYSLOT', `{t:${scope.path[0]}}`))));
  expect(slots.size).toBeGreaterThan(1);
  for (const scope of scopes) {
    await a.tier.write(scope, 'bin', binary, { sizeBytes: bytes.byteLength });
    const read = await b.tier.read(scope, 'bin');
    expect(read?.record?.value.encoding).toBe('bytes');
    expect(Buffer.from(read!.record!.value.bytes).equals(Buffer.from(bytes))).toBe(true);
    const grant = await a.tier.acquire(scope, 'job', { wait: false });
    if (grant === null || grant === 'busy') throw new Error(`no grant: ${grant}`);
    expect(await b.tier.acquire(scope, 'job', { wait: false })).toBe('busy');
    await b.tier.write(scope, 'job', record('plain'), { sizeBytes: 5 });
    await expectCode(a.tier.write(scope, 'job', record('fenced'), { lease: grant.lease, sizeBytes: 6 }), 'CACHE_LEASE_LOST');
    await a.tier.release(grant.lease);
    await b.tier.clear(scope);
    expect(text(await a.tier.read(scope, 'bin'))).toBeUndefined();
  }
  expect(a.tier.status()).toMatchObject({ state: expect.not.stringMatching('degraded'), errors: 0, fencedWrites: scopes.length });
  expect(b.tier.status()).toMatchObject({ errors: 0 });
  // Every master had the scripts from the start: no script ran by EVAL.
  for (const node of cluster.nodes) expect(await node.cli('INFO', 'commandstats')).not.toMatch(/cmdstat_eval:/);
});

test('a getset\u2019s write Redis did not take while a clear of its scope waits is written through plain, after that clear: the clear does not refuse it', async () => {
  const own = await startRedisServer({ unixSocket: true });
  const a = await makeTier({ url: own.url, timeoutMs: 500, prefix: 'w' });
  const b = await makeTier({ url: own.url, prefix: 'w' });
  const grant = await a.tier.acquire(pages, 'job', { wait: false });
  if (grant === null || grant === 'busy') throw new Error(`no grant: ${grant}`);
  // Writes (scripts) wait, reads and PINGs do not: the tier stays up while the clear and the write time out.
  await own.cli('CLIENT', 'PAUSE', '2000', 'WRITE');
  await a.tier.clear(pages);
  const computed = record('computed after the clear');
  a.sink.local.set(itemKey(pages, 'job'), computed);
  await a.tier.write(pages, 'job', computed, { lease: grant.lease, sizeBytes: 24 });
  expect(a.tier.status().pendingChanges).toBe(2);
  await until(() => a.tier.status().pendingChanges === 0, 'both are written through', 30_000);
  // Before the fix, the write went through fenced by its lease, older than the clear sent just before it: refused.
  expect(a.sink.replayed).toEqual([`${itemKey(pages, 'job')}:true`]);
  expect(text(await b.tier.read(pages, 'job'))).toBe('computed after the clear');
  await a.tier.release(grant.lease);
});

test("a whole scope's write-through that failed after its clear was sent does not clear the scope again when tried again: other machines' writes made meanwhile stay", async () => {
  const own = await startRedisServer({ unixSocket: true });
  const prefix = 'wc';
  const b = await makeTier({ url: own.url, prefix });
  let calls = 0;
  const a = await makeTier({
    url: own.url,
    prefix,
    timeoutMs: 500,
    // A previous run left the scope `pages` to write through whole.
    pendingFile: { keyPrefix: prefix, rootClear: false, tops: [{ top: 'pages', whole: true, clears: [], keys: [] }] },
    replayScope: async (scope, send) => {
      if (++calls === 1) {
        // The scope's clear went through: another machine writes meanwhile, then Redis holds writes back for a while.
        await b.tier.write(pages, 'other', record('by B after the clear'), { sizeBytes: 20 });
        await own.cli('CLIENT', 'PAUSE', '1000', 'WRITE');
      }
      await send(scope, 'mine', record('by A'));
      return [];
    },
  });
  await until(() => calls >= 2 && a.tier.status().pendingChanges === 0, 'the write-through was tried again, and went through', 30_000);
  // Before the fix, the second try cleared the scope again: B's write read as a miss.
  expect(text(await b.tier.read(pages, 'other'))).toBe('by B after the clear');
  expect(text(await b.tier.read(pages, 'mine'))).toBe('by A');
});

test('a write Redis answers with MISCONF (it cannot persist) waits, and is written through once Redis can write again', async () => {
  const own = await startRedisServer({ unixSocket: true, config: ['enable-protected-configs yes'] });
  const prefix = 'mc';
  const a = await makeTier({ url: own.url, prefix });
  const b = await makeTier({ url: own.url, prefix });
  const recover = await cannotPersist(own);
  await own.cli('CONFIG', 'RESETSTAT');
  const computed = record('written while Redis could not persist');
  a.sink.local.set(itemKey(pages, 'job'), computed);
  await a.tier.write(pages, 'job', computed, { sizeBytes: 37 });
  expect(a.tier.status().pendingChanges).toBe(1);
  // Each try adds its scope's name first (SADD), refused: the write, and two write-throughs, the first finished.
  let sadd = { calls: 0, failed: 0, rejected: 0 };
  // Before the fix, the first write-through was given up: no second one came.
  await until(() => sadd.rejected >= 3, 'Redis refused two write-throughs', 15_000, async () => void (sadd = await commandStats(own, 'sadd')));
  expect(a.tier.status().pendingChanges).toBe(1);
  await recover();
  await until(() => a.tier.status().pendingChanges === 0, 'the write is written through', 15_000);
  expect(text(await b.tier.read(pages, 'job'))).toBe('written while Redis could not persist');
});

test('a write Redis answers OOM (it is full) waits, keeps its local copy, and is written through once Redis has room', async () => {
  const own = await startRedisServer({ unixSocket: true });
  const prefix = 'oom';
  const a = await makeTier({ url: own.url, prefix });
  const b = await makeTier({ url: own.url, prefix });
  await own.cli('CONFIG', 'SET', 'maxmemory', '1', 'maxmemory-policy', 'noeviction');
  const computed = record('written while Redis is full');
  a.sink.local.set(itemKey(pages, 'job'), computed);
  await a.tier.write(pages, 'job', computed, { sizeBytes: 27 });
  expect(a.tier.status().pendingChanges).toBe(1);
  // The write, then two write-throughs answered OOM.
  await until(() => a.tier.status().errors >= 3, 'Redis answered two write-throughs OOM', 15_000);
  // Before the fix, the first write-through was given up and its local copy dropped (`replayed` held `…:false`).
  expect(a.sink.replayed).toEqual([]);
  expect(a.tier.status().pendingChanges).toBe(1);
  await own.cli('CONFIG', 'SET', 'maxmemory', '0');
  await until(() => a.tier.status().pendingChanges === 0, 'the write is written through', 15_000);
  expect(a.sink.replayed).toEqual([`${itemKey(pages, 'job')}:true`]);
  expect(text(await b.tier.read(pages, 'job'))).toBe('written while Redis is full');
});

test("one scope whose write-through keeps failing locally holds back only itself: the other scopes' changes are written through, and catching up goes on", async () => {
  const own = await startRedisServer({ unixSocket: true });
  const prefix = 'ra';
  const b = await makeTier({ url: own.url, prefix });
  const a = await makeTier({
    url: own.url,
    prefix,
    failingTops: ['broken'],
    // A previous run left changes in two scopes, the failing one first.
    pendingFile: { keyPrefix: prefix, rootClear: false, tops: [{ top: 'broken', whole: false, clears: [], keys: ['broken/:x'] }, { top: 'pages', whole: false, clears: [], keys: [itemKey(pages, 'job')] }] },
    local: new Map([[itemKey(pages, 'job'), record('by A before the restart')]]),
  });
  await until(() => a.tier.status().pendingChanges === 1, "the other scope's change is written through");
  expect(text(await b.tier.read(pages, 'job'))).toBe('by A before the restart');
  // Catching up on the change logs goes on past the failing write-through. Before the fix, it stopped there every
  // time: the tier stayed `catching-up`.
  await until(() => a.tier.status().state === 'connected', 'A is caught up on the change logs');
  expect(a.tier.status().pendingChanges).toBe(1);
  expect(a.log.join('\n')).toMatch(/EIO/);
});

test("a fenced key of a whole scope whose clear already went is sent once, plain, with the scope's items: not refused for its older fence, its local copy kept", async () => {
  const own = await startRedisServer({ unixSocket: true });
  const prefix = 'wf';
  const job = itemKey(pages, 'job');
  const sent: string[] = [];
  // Fences granted since that lease: the scope's clear, other machines' writes.
  await own.cli('INCRBY', new TierKeys(prefix).fenceCounter('pages'), '10');
  const a = await makeTier({
    url: own.url,
    prefix,
    // A previous run's whole scope: its clear went, then a getset's write (lease fence 1) failed and waits as a key.
    pendingFile: { keyPrefix: prefix, rootClear: false, tops: [{ top: 'pages', whole: true, cleared: true, clears: [], keys: [job], fences: { [job]: 1 } }] },
    local: new Map([[job, record('computed by A')]]),
    replayScope: async (scope, send) => {
      sent.push(`${job}:${String(await send(scope, 'job', record('computed by A')))}`);
      return [];
    },
  });
  await until(() => a.tier.status().pendingChanges === 0, 'the scope is written through', 15_000);
  expect(sent).toEqual([`${job}:true`]);
  // Before the fix, the key was sent again fenced by 1, refused as older than the whole write: dropped, counted.
  expect(a.sink.replayed.every((entry) => entry.endsWith(':true'))).toBe(true);
  expect(a.tier.status().fencedWrites).toBe(0);
});

test("a held item of a whole scope waits as a key at once: a write of it that Redis takes during the scope's write-through forgets it, and nothing undoes that write", async () => {
  const own = await startRedisServer({ unixSocket: true });
  const prefix = 'wh';
  const job = itemKey(pages, 'job');
  const b = await makeTier({ url: own.url, prefix });
  let tier: RedisTier | undefined;
  let passes = 0;
  const a = await makeTier({
    url: own.url,
    prefix,
    pendingFile: { keyPrefix: prefix, rootClear: false, tops: [{ top: 'pages', whole: true, cleared: true, clears: [], keys: [] }] },
    local: new Map([[job, record('old by A')]]),
    replayScope: async (_scope, _send, onHeld) => {
      // The item's lock is held (a getset): the pass goes on, and the getset's write reaches Redis meanwhile.
      onHeld?.(pages, 'job');
      if (++passes === 1) {
        await until(() => tier !== undefined, 'the tier is made');
        await tier!.write(pages, 'job', record('newer by A'), { sizeBytes: 10 });
      }
      return [{ scope: pages, id: 'job' }];
    },
  });
  tier = a.tier;
  await until(() => a.tier.status().pendingChanges === 0, 'nothing waits', 15_000);
  // Before the fix, the held item was added as a key after the pass: written through with the older local record.
  expect(a.sink.replayed).toEqual([]);
  expect(text(await b.tier.read(pages, 'job'))).toBe('newer by A');
});

test("a whole scope's items are written through fenced by its clear: an item another machine wrote after the clear keeps that write (the stale local copy is dropped), and no delete is sent for an item absent locally", async () => {
  const own = await startRedisServer({ unixSocket: true });
  const prefix = 'wn';
  const b = await makeTier({ url: own.url, prefix });
  const sent: string[] = [];
  const a = await makeTier({
    url: own.url,
    prefix,
    // A previous run left the scope `pages` to write through whole (its clear not sent yet).
    pendingFile: { keyPrefix: prefix, rootClear: false, tops: [{ top: 'pages', whole: true, clears: [], keys: [] }] },
    replayScope: async (scope, send) => {
      // The scope's clear went: another machine writes two of its items before A's write-through comes to them.
      await b.tier.write(pages, 'theirs', record('by B after the clear'), { sizeBytes: 20 });
      await b.tier.write(pages, 'gone', record('gone: by B after the clear'), { sizeBytes: 26 });
      sent.push(`theirs:${String(await send(scope, 'theirs', record('older by A')))}`);
      sent.push(`mine:${String(await send(scope, 'mine', record('by A')))}`);
      // Listed, but gone locally by now (expired): nothing to send after the clear.
      sent.push(`gone:${String(await send(scope, 'gone', undefined))}`);
      return [];
    },
  });
  await until(() => sent.length === 3 && a.tier.status().pendingChanges === 0, 'the scope is written through', 15_000);
  // Before the fix, A's older copy was sent plain over B's newer write, and the missing one as a delete.
  expect(sent).toEqual(['theirs:false', 'mine:true', 'gone:true']);
  expect(text(await b.tier.read(pages, 'theirs'))).toBe('by B after the clear');
  expect(text(await b.tier.read(pages, 'gone'))).toBe('gone: by B after the clear');
  expect(text(await b.tier.read(pages, 'mine'))).toBe('by A');
  expect(a.tier.status().fencedWrites).toBe(1);
});

test("a held item's queued lock request is one per key across passes, and is aborted when its change no longer waits (a write Redis took, a clear covering it) and at close", async () => {
  const own = await startRedisServer({ unixSocket: true });
  const prefix = 'hq';
  const [a, b, c] = [itemKey(pages, 'a'), itemKey(scopeOf(['pages', 'sub']), 'b'), itemKey(pages, 'c')];
  const tier = await makeTier({
    url: own.url,
    prefix,
    // A previous run left three items to write through, whose locks are held now (readers, a getset).
    pendingFile: { keyPrefix: prefix, rootClear: false, tops: [{ top: 'pages', whole: false, clears: [], keys: [a, b, c] }] },
    held: [a, b, c],
  });
  // Three passes found each lock held: one request each, not one per pass.
  await until(() => [a, b, c].every((key) => (tier.sink.tries.get(key) ?? 0) >= 3), 'three passes tried each item', 15_000);
  expect(tier.sink.queued).toEqual([`queued ${a}`, `queued ${b}`, `queued ${c}`]);
  expect(tier.tier.status().pendingChanges).toBe(3);
  // A write of a that Redis takes makes it current there: its request goes.
  await tier.tier.write(pages, 'a', record('a written now'), { sizeBytes: 13 });
  expect(tier.sink.queued.slice(3)).toEqual([`aborted ${a}`]);
  // A clear of b's scope that Redis takes forgets b's change: its request goes.
  await tier.tier.clear(scopeOf(['pages', 'sub']));
  expect(tier.sink.queued.slice(4)).toEqual([`aborted ${b}`]);
  expect(tier.tier.status().pendingChanges).toBe(1);
  // c's change still waits (kept in the file for the next run); its request goes at close.
  await tier.tier.close();
  expect(tier.sink.queued.slice(5)).toEqual([`aborted ${c}`]);
});
