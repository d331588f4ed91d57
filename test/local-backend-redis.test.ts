import { execFileSync } from 'node:child_process';
import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, onTestFinished, test } from 'vitest';
import { RedisTier } from '../daemon/redis-tier.js';
import { TierKeys } from '../daemon/tier-keys.js';
import { tierOptions } from '../daemon/tier-options.js';
import { LevelStore } from '../src/level/level-store.js';
import { LocalBackend } from '../src/local-backend.js';
import { ROOT_SCOPE, scopeOf } from '../src/scope-path.js';
import type { EncodedValue } from '../src/store.js';
import { eventually } from './conformance/support.js';
import { redisServerForFile, startRedisServer, startTcpProxy } from './support/redis-server.js';
import { fillDisk } from './support/full-disk.js';
import { tempDir } from './support/temp-dir.js';

/**
 * LocalBackend's own ordering rules (test/local-backend-tier.test.ts proves them with a recording tier) against the
 * real RedisTier on a real redis-server: several backends, each on a LevelStore of its own, stand in for machines.
 */

const keep = { encode: (value: EncodedValue) => value, decode: (value: EncodedValue) => value };
const text = (value: string): EncodedValue => ({ encoding: 'json', bytes: Buffer.from(JSON.stringify(value)) });
const textOf = (value: EncodedValue | undefined): string | undefined => (value === undefined ? undefined : (JSON.parse(Buffer.from(value.bytes).toString()) as string));
const PAGES = scopeOf(['pages']);
const at = { modified: 1_700_000_000 };

const redis = redisServerForFile();
let prefixes = 0;

interface Machine {
  backend: LocalBackend<EncodedValue, EncodedValue>;
  store: LevelStore;
  tier: RedisTier;
}

/** One machine: a LevelStore in a fresh directory and a RedisTier on `url`, attached; closed when the test ends. */
async function machine(
  prefix: string,
  options: {
    strict?: boolean;
    maxSizeBytes?: number;
    recencyBucketMs?: number;
    url?: string;
    share?: string[];
    log?: (line: string) => void;
    dataDir?: string;
    maxPending?: number;
  } = {},
): Promise<Machine> {
  const dataDir = options.dataDir ?? (await tempDir('hlbr-'));
  const store = await LevelStore.open(dataDir, { maxSizeBytes: options.maxSizeBytes ?? Infinity, ...(options.recencyBucketMs === undefined ? {} : { recencyBucketMs: options.recencyBucketMs }) });
  // Generous bounds: on a busy machine a tier command may take seconds, and then the rules under test would become the
  // fallback's. A stopped Redis refuses connections at once, whatever the timeout.
  const settings = tierOptions({ tier: [options.url ?? redis.url], share: options.share ?? ['pages=shared'], tierPrefix: prefix, tierStrict: options.strict, tierLease: '30s', tierTimeout: '10s', tierMaxPending: options.maxPending?.toString() }, {})!;
  const tier = new RedisTier({ ...settings, dataDir, log: options.log ?? (() => {}) });
  const backend = new LocalBackend<EncodedValue, EncodedValue>(store, keep, { tier });
  onTestFinished(() => backend.close());
  await backend.openTier();
  return { backend, store, tier };
}

function freshPrefix(): string {
  return `lbr${process.pid}-${++prefixes}`;
}

/** The value Redis holds for an item of `pages` (`undefined`: none, or a tombstone). */
async function sharedValue(prefix: string, id: string): Promise<string | undefined> {
  const raw = await redis.cli('HGET', `{${prefix}:pages}i:pages/:${id}`, 'v');
  return raw === '' ? undefined : (JSON.parse(raw) as string);
}

/** How many times Redis ran each command so far (`INFO commandstats`), by lower-case name. */
async function commandCalls(): Promise<Map<string, number>> {
  const calls = new Map<string, number>();
  for (const [, name, count] of (await redis.cli('INFO', 'commandstats')).matchAll(/^cmdstat_([^:]+):calls=(\d+)/gm)) calls.set(name!, Number(count));
  return calls;
}

describe('LocalBackend with RedisTier on a real Redis', () => {
  test('a miss goes through Redis (readNow lets go at once), and a kept copy makes every later read a local hit: no command reaches Redis', async () => {
    const prefix = freshPrefix();
    const writer = await machine(prefix);
    const reader = await machine(prefix);
    await writer.backend.set(PAGES, 'a', text('shared'), at);
    await writer.backend.set(PAGES, 'b', text('second'), at);

    expect(reader.backend.readNow(PAGES, 'a')).toBeUndefined();
    expect(reader.backend.lockStats()).toEqual({ held: 0, waiting: 0 });
    // The first read of a scope this run is served, not kept: its change log's position was not known when it began.
    for (const id of ['a', 'b']) {
      const got = (await reader.backend.get(PAGES, id, {}))!;
      expect(textOf((await got.item!.value()) as EncodedValue)).toBe(id === 'a' ? 'shared' : 'second');
      await got.release();
    }
    expect(reader.store.read(PAGES, 'a')).toBeUndefined();
    expect(textOf(reader.store.read(PAGES, 'b')?.value)).toBe('second');

    const before = await commandCalls();
    for (let n = 0; n < 100; n++) {
      const now = reader.backend.readNow(PAGES, 'b')!;
      expect(textOf(now.record!.value)).toBe('second');
      now.lease.release();
      const got = (await reader.backend.get(PAGES, 'b', {}))!;
      await got.release();
      const gs = await reader.backend.getset(PAGES, 'b', { wait: true });
      expect(gs.item).not.toBeNull();
      await gs.release();
    }
    const after = await commandCalls();
    for (const command of ['hgetall', 'hmget', 'evalsha', 'eval']) expect(after.get(command) ?? 0, command).toBe(before.get(command) ?? 0);
  });

  test('a fenced write (CACHE_LEASE_LOST) leaves the local store untouched, and the newer value stands in Redis', async () => {
    const prefix = freshPrefix();
    const holder = await machine(prefix);
    const other = await machine(prefix);
    const gs = await holder.backend.getset(PAGES, 'x', { wait: true });
    expect(gs.item).toBeNull();
    // A plain set elsewhere does not wait for the holder: it supersedes it.
    await other.backend.set(PAGES, 'x', text('newer'), at);
    await expect(gs.set!(text('late'))).rejects.toMatchObject({ code: 'CACHE_LEASE_LOST' });
    expect(holder.store.read(PAGES, 'x')).toBeUndefined();
    await gs.release();
    expect(await sharedValue(prefix, 'x')).toBe('newer');
    expect(holder.tier.status().fencedWrites).toBe(1);
  });

  test('default order: the local write first (refused by the local size limit, Redis never sees the value); strict: Redis first', async () => {
    const prefix = freshPrefix();
    const relaxed = await machine(prefix, { maxSizeBytes: 2000 });
    await expect(relaxed.backend.set(PAGES, 'big', text('x'.repeat(5000)), at)).rejects.toMatchObject({ code: 'CACHE_OVER_SIZE_LIMIT' });
    expect(await sharedValue(prefix, 'big')).toBeUndefined();

    const strict = await machine(prefix, { maxSizeBytes: 2000, strict: true });
    await strict.backend.set(PAGES, 'big', text('small'), at);
    await expect(strict.backend.set(PAGES, 'big', text('x'.repeat(5000)), at)).rejects.toMatchObject({ code: 'CACHE_OVER_SIZE_LIMIT' });
    // Redis took it first; the old local copy, which Redis no longer vouches for, is gone.
    expect(await sharedValue(prefix, 'big')).toHaveLength(5000);
    expect(strict.store.read(PAGES, 'big')).toBeUndefined();
  });

  test('with Redis gone: strict refuses with CACHE_TIER_UNAVAILABLE and writes nothing locally; the default writes locally and counts', async () => {
    const own = await startRedisServer();
    const prefix = freshPrefix();
    const strict = await machine(prefix, { strict: true, url: own.url });
    const relaxed = await machine(prefix, { url: own.url });
    await own.stop();
    await expect(strict.backend.set(PAGES, 'a', text('v'), at)).rejects.toMatchObject({ code: 'CACHE_TIER_UNAVAILABLE' });
    expect(strict.store.read(PAGES, 'a')).toBeUndefined();
    await expect(strict.backend.delete(PAGES, 'a')).rejects.toMatchObject({ code: 'CACHE_TIER_UNAVAILABLE' });
    await relaxed.backend.set(PAGES, 'a', text('v'), at);
    expect(textOf(relaxed.store.read(PAGES, 'a')?.value)).toBe('v');
    expect(relaxed.tier.status()).toMatchObject({ state: 'degraded' });
    // A getset miss holds the local lock alone, and says so.
    const gs = await relaxed.backend.getset(PAGES, 'b', { wait: true });
    await gs.set!(text('computed'));
    await gs.release();
    expect(textOf(relaxed.store.read(PAGES, 'b')?.value)).toBe('computed');
    expect(relaxed.tier.status().localFallbacks).toBe(1);
  });
});

async function valueOn(machine: Machine, id: string): Promise<string | undefined> {
  const got = (await machine.backend.get(PAGES, id, {}))!;
  try {
    return got.item === null ? undefined : textOf(await got.item.value());
  } finally {
    await got.release();
  }
}

describe("the change log against this daemon's own changes that wait to be written through", () => {
  /**
   * The change log against this daemon's own changes that wait to be written through, with LocalBackend and RedisTier
   * in this process (each on a LevelStore of its own, standing in for machines) on a real redis-server: the order of
   * the concurrent steps is set by who holds an item's lock, and read from the lock table, never from sleeps.
   */
  test("another machine's change heard while a local write of the item waits for its lock, and that write then waits to be written through: the local write is kept, written through, and wins", async () => {
    const prefix = freshPrefix();
    const proxy = await startTcpProxy({ port: redis.port! });
    const [a, b] = await Promise.all([machine(prefix, { url: proxy.url }), machine(prefix)]);
    // A follows the scope's change log: B's change of an item A holds reaches A as an invalidation.
    await b.backend.set(PAGES, 'warm', text('warm by B'), at);
    await eventually(async () => (await valueOn(a, 'warm')) === 'warm by B' && a.store.read(PAGES, 'warm') !== undefined, 'A keeps a copy of what it reads');
    await b.backend.set(PAGES, 'warm', text('warm again by B'), at);
    await eventually(() => a.store.read(PAGES, 'warm') === undefined, "A applies B's change");

    // A reader holds the item: A's own set waits for it, and then the invalidation of B's change, behind the set.
    const reader = (await a.backend.get(PAGES, 'x', {}))!;
    const setting = a.backend.set(PAGES, 'x', text('x by A'), at);
    await eventually(() => a.backend.lockStats().waiting === 1, "A's set waits for the reader");
    await b.backend.set(PAGES, 'x', text('x by B'), at);
    await eventually(() => a.backend.lockStats().waiting === 2, "the invalidation of B's change waits behind A's set");
    expect(a.backend.lockSnapshot().filter((lock) => lock.state === 'waiting').map((lock) => lock.owner?.name ?? null)).toEqual([null, 'hoard tier']);

    // Redis can no longer take A's set: it waits to be written through, and wins there once written (it is the later).
    proxy.cut('reset');
    await reader.release();
    await setting;
    await eventually(() => a.backend.lockStats().waiting === 0 && a.backend.lockStats().held === 0, 'the invalidation ran');
    expect(a.tier.status().pendingChanges).toBe(1);
    // Before the fix, the invalidation, checked before A's set became pending, dropped it: then written through as a delete.
    expect(textOf(a.store.read(PAGES, 'x')?.value)).toBe('x by A');

    proxy.restore();
    await eventually(async () => a.tier.status().pendingChanges === 0 && (await valueOn(b, 'x')) === 'x by A', "A's set reaches B");
    expect(await valueOn(a, 'x')).toBe('x by A');
  });
});

describe('drops and invalidations that wait for an item held locally', () => {
  /** The tier's lock requests that wait for the item (`hoard tier` is who the tier's drops are). */
  const tierWaiters = (machine: Machine, id: string): number =>
    machine.backend.lockSnapshot().filter((lock) => lock.key === `pages/:${id}` && lock.state === 'waiting' && lock.owner?.name === 'hoard tier').length;

  test("a reader queued behind a getset holder before another machine's change of the item is heard does not get the old copy", async () => {
    const prefix = freshPrefix();
    const [a, b] = await Promise.all([machine(prefix), machine(prefix)]);
    await a.backend.set(PAGES, 'x', text('x by A'), at);
    // A getset that finds A's copy holds the item; a reader waits behind it.
    const holder = await a.backend.getset(PAGES, 'x', { wait: true });
    expect(textOf(await holder.item!.value())).toBe('x by A');
    const reading = a.backend.get(PAGES, 'x', {});
    await eventually(() => a.backend.lockStats().waiting === 1, 'the reader waits for the getset');
    // B's change reaches A: its invalidation waits behind the reader.
    await b.backend.set(PAGES, 'x', text('x by B'), at);
    await eventually(() => tierWaiters(a, 'x') === 1, "the invalidation of B's change waits behind the reader");
    await holder.release();
    const got = (await reading)!;
    const value = got.item === null ? undefined : textOf(await got.item.value());
    await got.release();
    // Before the fix the reader, granted before the invalidation, got A's old copy: `expected 'x by A' to be 'x by B'`.
    expect(value).toBe('x by B');
    await eventually(() => a.backend.lockStats().waiting === 0 && a.backend.lockStats().held === 0, 'the invalidation ran');
    expect(await valueOn(a, 'x')).toBe('x by B');
  });

  test('an invalidation waiting for an item a getset holds when the backend closes ends quietly: no line says it failed and is tried again', async () => {
    const prefix = freshPrefix();
    const lines: string[] = [];
    const [a, b] = await Promise.all([machine(prefix, { log: (line) => lines.push(line) }), machine(prefix)]);
    // A getset holds x and its lease in Redis, which A's close releases (a round trip) before the change log stops.
    await a.backend.set(PAGES, 'w', text('w by A'), at);
    const holder = await a.backend.getset(PAGES, 'x', { wait: true });
    expect(a.tier.status().leases).toBe(1);
    await b.backend.set(PAGES, 'x', text('x by B'), at);
    await eventually(() => tierWaiters(a, 'x') === 1, "the invalidation of B's change waits for the getset");
    await a.backend.close();
    await holder.release();
    // Before the fix: `tier: dropping local copies that changed in the tier failed, trying again: The cache is closed.`
    expect(lines.filter((line) => line.includes('failed'))).toEqual([]);
  });

  test("an invalidation that failed (a full disk), then overtaken by a drop of its scope that deleted the copy, leaves no mark: the item's next copy is served locally", async () => {
    const prefix = freshPrefix();
    const lines: string[] = [];
    // A's store on a small tmpfs of its own (root only), which fills up.
    const disk = join(await tempDir('hlbd-'), 'disk');
    await mkdir(disk);
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=16m', 'tmpfs', disk]);
    onTestFinished(() => void execFileSync('umount', ['-l', disk]));
    const [a, b] = await Promise.all([machine(prefix, { dataDir: join(disk, 'data'), log: (line) => lines.push(line) }), machine(prefix)]);
    await b.backend.set(PAGES, 'x', text('x by B'), at);
    await eventually(async () => (await valueOn(a, 'x')) === 'x by B' && a.store.read(PAGES, 'x') !== undefined, 'A keeps a copy of x');

    const filler = join(disk, 'filler');
    fillDisk(filler);
    // A local write that fails for room: the store refuses every write after it until the disk has room again.
    await expect(a.backend.set(scopeOf(['own']), 'big', text('z'.repeat(16_000)), at)).rejects.toMatchObject({ code: expect.any(String) });
    await b.backend.set(PAGES, 'x', text('x again by B'), at);
    await eventually(() => lines.some((line) => line.includes('dropping local copies that changed in the tier failed')), "A's invalidation of x fails");
    expect(a.store.read(PAGES, 'x')).toBeDefined();
    // The log no longer reaches back to where A read it: B's next change makes A drop the scope, which deletes x.
    await redis.cli('XTRIM', new TierKeys(prefix).changeLog('pages'), 'MAXLEN', '0');
    await b.backend.set(PAGES, 'y', text('y by B'), at);
    await eventually(() => a.tier.status().state === 'catching-up', 'A drops the scope');
    await rm(filler);
    await eventually(() => a.tier.status().droppedScopes === 1 && a.tier.status().state === 'connected' && a.store.read(PAGES, 'x') === undefined, 'the drop is done');

    // x is read through and kept again: that copy is A's to serve.
    await eventually(async () => (await valueOn(a, 'x')) === 'x again by B' && a.store.read(PAGES, 'x') !== undefined, 'A keeps a copy of x again');
    const now = a.backend.readNow(PAGES, 'x');
    now?.lease.release();
    // Before the fix the failed invalidation's mark stayed for good: every read of x went to Redis, `expected undefined to be 'x again by B'`.
    expect(textOf(now?.record?.value)).toBe('x again by B');
  });

  test('a scope dropped again and again while one of its items is held queues one lock request for that item, not one per drop', async () => {
    const prefix = freshPrefix();
    const proxy = await startTcpProxy({ port: redis.port! });
    const [a, b] = await Promise.all([machine(prefix, { url: proxy.url }), machine(prefix)]);
    await b.backend.set(PAGES, 'x', text('x by B'), at);
    await eventually(async () => (await valueOn(a, 'x')) === 'x by B' && a.store.read(PAGES, 'x') !== undefined, 'A keeps a copy of x');
    // A reader holds x (a client's handle) throughout: each drop of the scope finds it held.
    const reader = (await a.backend.get(PAGES, 'x', {}))!;
    const drops = 3;
    for (let round = 1; round <= drops; round++) {
      await b.backend.set(PAGES, 'y', text(`y ${round} by B`), at);
      await eventually(async () => (await valueOn(a, 'y')) === `y ${round} by B` && a.store.read(PAGES, 'y') !== undefined, 'A keeps a copy of y');
      proxy.cut('reset');
      await eventually(() => a.tier.status().state === 'degraded', 'A finds the cut');
      await b.backend.set(PAGES, 'y', text(`y ${round} by B during the cut`), at);
      // The log no longer reaches back to where A stopped reading it: A drops the scope once it is back.
      expect(Number(await redis.cli('XTRIM', `{${prefix}:pages}c`, 'MAXLEN', '1'))).toBeGreaterThan(0);
      proxy.restore();
      // The round's own drop, walked past x (counted once walked). y's copy gone alone is no sign of it: B's set of y
      // heard just after A kept its copy invalidates it, and the next round's cut then cut this round's catch-up short,
      // so that one drop served two rounds (seen once: `expected 2 to be 3` below).
      await eventually(() => a.tier.status().droppedScopes === round && a.store.read(PAGES, 'y') === undefined, `A drops the scope (round ${round})`);
    }
    const waiting = tierWaiters(a, 'x');
    // Before the fix, every drop queued its own request: `expected 3 to be 1`.
    expect(waiting).toBe(1);
    // Meanwhile x reads through to Redis rather than from A's dropped copy.
    await reader.release();
    await eventually(() => a.backend.lockStats().waiting === 0 && a.store.read(PAGES, 'x') === undefined, "x's copy is dropped once its lock is free");
    await eventually(() => a.tier.status().state === 'connected', 'A is connected');
    expect(a.tier.status().droppedScopes).toBe(drops);
  });
});

describe('an item whose own delete waits to be written through', () => {
  test("a getset granted the item's lease before the delete is written through gets a miss, not Redis's older copy, and the delete then stands everywhere", async () => {
    const prefix = freshPrefix();
    const proxy = await startTcpProxy({ port: redis.port! });
    const [a, b] = await Promise.all([machine(prefix, { url: proxy.url }), machine(prefix)]);
    await b.backend.set(PAGES, 'x', text('x by B'), at);
    await eventually(async () => (await valueOn(a, 'x')) === 'x by B' && a.store.read(PAGES, 'x') !== undefined, 'A keeps a copy of x');
    proxy.cut('reset');
    await eventually(() => a.tier.status().state === 'degraded', 'A finds the cut');
    await a.backend.delete(PAGES, 'x', {});
    expect(a.tier.status().pendingChanges).toBe(1);

    // A reader holds x; a getset waits for it, and the delete's write-through, once Redis is back, behind the getset.
    const reader = (await a.backend.get(PAGES, 'x', {}))!;
    expect(reader.item).toBeNull();
    const computing = a.backend.getset(PAGES, 'x', { wait: true });
    await eventually(() => a.backend.lockStats().waiting === 1, 'the getset waits for the reader');
    proxy.restore();
    await eventually(
      () => a.backend.lockSnapshot().some((lock) => lock.key === 'pages/:x' && lock.state === 'waiting' && lock.owner?.name === 'hoard tier'),
      "the delete's write-through waits behind the getset",
    );
    await eventually(() => a.tier.status().state !== 'degraded', 'A reaches Redis again');
    await reader.release();
    const gs = await computing;
    const got = gs.item === null ? undefined : textOf((await gs.item.value()) as EncodedValue);
    await gs.release();
    // Before the fix the grant handed out Redis's copy and kept it, then written through as a set: `expected 'x by B' to be undefined`.
    expect(got).toBeUndefined();
    expect(a.tier.status().leases).toBe(1);
    await eventually(() => a.tier.status().pendingChanges === 0, 'the delete is written through');
    expect(await sharedValue(prefix, 'x')).toBeUndefined();
    expect(await valueOn(b, 'x')).toBeUndefined();
    expect(await valueOn(a, 'x')).toBeUndefined();
  });
});

describe("a drop of the root scope's own items", () => {
  test("leaves every other scope's copies served while it walks: a shared scope in sync, and a local one", async () => {
    const prefix = freshPrefix();
    const share = ['*=shared', 'own=local'];
    const [a, b] = await Promise.all([machine(prefix, { share }), machine(prefix, { share })]);
    const OWN = scopeOf(['own']);
    // A follows the root scope's change log (its own write), and holds copies in a shared and a local scope.
    await a.backend.set(ROOT_SCOPE, 'r', text('r by A'), at);
    await a.backend.set(PAGES, 'p', text('p by A'), at);
    await a.backend.set(OWN, 'c', text('c by A'), at);
    // Root items enough for a walk of two pages; `d999` is the last in key order.
    for (let n = 0; n < 2000; n++) await a.store.write(ROOT_SCOPE, `d${n}`, { modified: 1, value: text('d') });
    await eventually(() => a.tier.status().state === 'connected', 'A is caught up');
    const served = (scope: typeof PAGES, id: string): boolean => {
      const now = a.backend.readNow(scope, id);
      now?.lease.release();
      return now?.record !== undefined;
    };
    expect([served(ROOT_SCOPE, 'd999'), served(PAGES, 'p'), served(OWN, 'c')]).toEqual([true, true, true]);

    // The root's log no longer reaches back to where A stopped reading it: B's next entry makes A drop the root's items.
    await redis.cli('XTRIM', new TierKeys(prefix).changeLog(''), 'MAXLEN', '0');
    await b.backend.set(ROOT_SCOPE, 'r', text('r by B'), at);
    const misses: string[] = [];
    let duringDrop = 0;
    while (a.tier.status().droppedScopes === 0) {
      // The drop is walking: the root's items read as misses, the last one not dropped yet.
      if (!served(ROOT_SCOPE, 'd999') && a.store.read(ROOT_SCOPE, 'd999') !== undefined) duringDrop++;
      for (const [scope, id] of [[PAGES, 'p'], [OWN, 'c']] as const) if (!served(scope, id)) misses.push(scope.prefix + id);
      await new Promise((resolve) => setImmediate(resolve));
    }
    expect(a.store.read(ROOT_SCOPE, 'd999')).toBeUndefined();
    expect(duringDrop).toBeGreaterThan(0);
    // Before the fix, every item of every scope read as a miss while the root's items were walked: `pages/p`, `own/c`.
    expect([...new Set(misses)]).toEqual([]);
  });
});

describe('eviction and expiry of an item whose change waits to be written through', () => {
  test('an acknowledged set waiting for its write-through is not evicted (the others are), and reaches Redis; one that expired meanwhile goes as a delete', async () => {
    const prefix = freshPrefix();
    const proxy = await startTcpProxy({ port: redis.port! });
    const [a, b] = await Promise.all([machine(prefix, { url: proxy.url, maxSizeBytes: 6000, recencyBucketMs: 1 }), machine(prefix)]);
    await b.backend.set(PAGES, 'x', text('x by B'), at);
    await b.backend.set(PAGES, 'y', text('y by B'), at);
    proxy.cut('reset');
    await a.backend.set(PAGES, 'x', text('x by A'), at);
    await a.backend.set(PAGES, 'y', text('y by A'), { ...at, ttlMs: 1 });
    expect(a.tier.status().pendingChanges).toBe(2);
    // x is now the least recently used item (recency kept to the millisecond): the filler, in a scope A keeps local,
    // pushes the store past its limit, and eviction runs.
    for (let n = 0; n < 12; n++) await a.backend.set(scopeOf(['own']), `filler${n}`, text('f'.repeat(1000)), at);
    await eventually(() => a.backend.counters().evictedItems > 0 && a.store.usage().bytes <= 6000, 'A evicts down to its limit');
    // Before the fix x went first (the least recently used): `expected undefined to be 'x by A'`.
    expect(textOf(a.store.read(PAGES, 'x')?.value)).toBe('x by A');

    proxy.restore();
    await eventually(() => a.tier.status().pendingChanges === 0, 'A writes its changes through');
    expect(await sharedValue(prefix, 'x')).toBe('x by A');
    expect(await valueOn(b, 'x')).toBe('x by A');
    // y expired before its write-through: sent as a delete, so that B's older copy is not served either.
    expect(await sharedValue(prefix, 'y')).toBeUndefined();
    expect(await valueOn(b, 'y')).toBeUndefined();
  });

  test('the items of a scope remembered whole (past --tier-max-pending) are not evicted before its pass, and all reach Redis', async () => {
    const prefix = freshPrefix();
    const proxy = await startTcpProxy({ port: redis.port! });
    const [a, b] = await Promise.all([machine(prefix, { url: proxy.url, maxSizeBytes: 6000, recencyBucketMs: 1, maxPending: 2 }), machine(prefix)]);
    await b.backend.set(PAGES, 'x', text('x by B'), at);
    proxy.cut('reset');
    for (const id of ['x', 'y', 'z']) await a.backend.set(PAGES, id, text(`${id} by A`), at);
    // Three changes past a bound of two: pages is remembered whole (its pass clears it in Redis, then writes what is local).
    expect(a.tier.status().pendingChanges).toBe(1);
    for (let n = 0; n < 12; n++) await a.backend.set(scopeOf(['own']), `filler${n}`, text('f'.repeat(1000)), at);
    await eventually(() => a.backend.counters().evictedItems > 0 && a.store.usage().bytes <= 6000, 'A evicts down to its limit');
    // Before the fix all three went: `expected [ undefined, undefined, undefined ] to deeply equal [ 'x by A', … ]`.
    expect(['x', 'y', 'z'].map((id) => textOf(a.store.read(PAGES, id)?.value))).toEqual(['x by A', 'y by A', 'z by A']);

    proxy.restore();
    await eventually(() => a.tier.status().pendingChanges === 0, 'A writes its changes through');
    expect(await Promise.all(['x', 'y', 'z'].map((id) => sharedValue(prefix, id)))).toEqual(['x by A', 'y by A', 'z by A']);
    expect(await valueOn(b, 'x')).toBe('x by A');
    expect(a.tier.status().evictedBeforeWriteThrough).toBe(0);
  });

  test('items waiting for their write-through are evicted only when the others cannot bring the store down to its target, the least recently used first, counted, logged, and deleted in Redis', async () => {
    const prefix = freshPrefix();
    const proxy = await startTcpProxy({ port: redis.port! });
    const lines: string[] = [];
    const [a, b] = await Promise.all([machine(prefix, { url: proxy.url, maxSizeBytes: 6000, recencyBucketMs: 1, log: (line) => lines.push(line) }), machine(prefix)]);
    const ids = ['p0', 'p1', 'p2', 'p3', 'p4', 'p5', 'p6'];
    for (const id of ids) await b.backend.set(PAGES, id, text(`${id} by B`), at);
    proxy.cut('reset');
    // Seven changes of about 1 KiB each wait: more than the 6000-byte limit.
    for (const id of ids) await a.backend.set(PAGES, id, text(`${id} by A `.padEnd(1000, '.')), at);
    expect(a.tier.status().pendingChanges).toBe(7);
    // Before pinned items were evicted at all, the store stayed above its limit, every one kept: this timed out.
    await eventually(() => a.store.usage().bytes <= 6000 && a.tier.status().evictedBeforeWriteThrough === 2, 'A evicts down to its limit');
    const kept = ids.filter((id) => a.store.read(PAGES, id) !== undefined);
    const evicted = ids.filter((id) => !kept.includes(id));
    // Seven items of 1026 bytes: the target (90% of the limit) needs two to go, the least recently used. Before (kept
    // to half of the limit), four went.
    expect(evicted).toEqual(['p0', 'p1']);
    expect(lines.filter((line) => line.includes('was evicted, Redis will not have its value'))).toHaveLength(1);

    proxy.restore();
    await eventually(() => a.tier.status().pendingChanges === 0, 'A writes its changes through');
    // An evicted one goes as a delete: B's older copy is not served as current.
    for (const id of evicted) expect([await sharedValue(prefix, id), await valueOn(b, id)]).toEqual([undefined, undefined]);
    for (const id of kept) expect((await valueOn(b, id))?.startsWith(`${id} by A`)).toBe(true);
  });
});
