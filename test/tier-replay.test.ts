import { readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { expect, test } from 'vitest';
import { TierKeys } from '../daemon/tier-keys.js';
import type { Cache } from '../src/cache.js';
import { eventually } from './conformance/support.js';
import { readOnlyRules, startRedisServer, startTcpProxy, type CutMode } from './support/redis-server.js';
import { HEALTHY_TIER, sharedItem, sharedValues, startTierDaemon, type TierDaemon, type TierDaemonOptions } from './support/tier-daemon.js';

/**
 * Changes a daemon made while Redis could not take them (cut off by a TCP proxy) are written through once it can:
 * another daemon, never cut off, then serves them. Daemon A goes through the proxy with a short timeout, so that the
 * cut is found fast; daemon B reaches Redis directly.
 */

/** A's tier settings: a cut is found within 300 ms (the lease must be three timeouts at least). */
const CUT_SIDE = Object.freeze({ timeoutMs: 300, leaseMs: 1500 });
/** How long after the restore every change must have reached B: generous, for a busy machine. */
const CONVERGED_MS = 20_000;

async function valueOf(cache: Cache<unknown>, id: string): Promise<unknown> {
  await using got = await cache.get(id);
  return got.item === null ? undefined : await got.item.value();
}

/** Two daemons on one Redis, A through a proxy; `extra` goes to A's flags. */
async function setup(options: { extra?: string[] } = {}) {
  const server = await startRedisServer();
  const proxy = await startTcpProxy({ port: server.port });
  const aOptions: TierDaemonOptions = { tier: proxy.url, ...CUT_SIDE, ...(options.extra && { extra: options.extra }) };
  const [a, b] = await Promise.all([startTierDaemon(aOptions), startTierDaemon({ tier: server.url, ...HEALTHY_TIER })]);
  return { server, proxy, a, b, aOptions };
}

/** Cuts the proxy and waits until A says it is degraded (a write times out, or the connection is refused). */
async function cut(proxy: { cut(mode?: CutMode): void }, a: TierDaemon, mode: CutMode): Promise<void> {
  proxy.cut(mode);
  await eventually(async () => {
    await a.cache.withScope('probe').set('p', 'p');
    return (await a.tierStatus()).state === 'degraded';
  }, 'A finds the cut');
}

/** Waits until A serves each of `ids` from its own copy (it has read them through once). */
async function holdCopies(daemon: TierDaemon, cache: Cache<unknown>, ids: readonly string[]): Promise<void> {
  await eventually(async () => {
    const before = await daemon.tierStatus();
    for (const id of ids) await valueOf(cache, id);
    const after = await daemon.tierStatus();
    return after.sharedHits + after.sharedMisses === before.sharedHits + before.sharedMisses;
  }, 'the daemon holds local copies');
}

/** Waits until `read` gives `expected` for each id, and resolves to how long that took. */
async function converged(read: (id: string) => Promise<unknown>, expected: ReadonlyMap<string, unknown>, what: string): Promise<number> {
  const startedMs = performance.now();
  await eventually(
    async () => {
      for (const [id, value] of expected) if ((await read(id)) !== value) return false;
      return true;
    },
    what,
    CONVERGED_MS,
  );
  return performance.now() - startedMs;
}

test('sets, deletes and a clear acknowledged while cut off reach the other daemon after the restore; status counts them pending until then', async () => {
  const { proxy, a, b } = await setup();
  const onB = b.cache.withScope('r');
  const onA = a.cache.withScope('r');
  // Items that A will delete or clear, written by B and held as copies by A.
  for (const id of ['d0', 'd1', 'd2']) await onB.set(id, `${id} by B`);
  for (const id of ['x0', 'x1']) await onB.withScope('c').set(id, `${id} by B`);
  await holdCopies(a, onA, ['d0', 'd1', 'd2']);
  await holdCopies(a, onA.withScope('c'), ['x0', 'x1']);

  await cut(proxy, a, 'blackhole');
  const expected = new Map<string, unknown>();
  for (let n = 0; n < 5; n++) {
    await onA.set(`a${n}`, `a${n} by A during the cut`);
    expected.set(`a${n}`, `a${n} by A during the cut`);
  }
  for (const id of ['d0', 'd1', 'd2']) {
    await onA.delete(id);
    expected.set(id, undefined);
  }
  await onA.withScope('c').clear();
  const during = await a.tierStatus();
  expect(during.state).toBe('degraded');
  // 5 sets and 3 deletes, the clear of r/c, and the probe's set.
  expect(during.pendingChanges).toBe(10);

  proxy.restore();
  const tookMs = await converged((id) => valueOf(onB, id), expected, 'B serves what A changed during the cut');
  for (const id of ['x0', 'x1']) expect(await valueOf(onB.withScope('c'), id)).toBeUndefined();
  await eventually(async () => (await a.tierStatus()).pendingChanges === 0, 'nothing pending on A');
  await eventually(async () => (await a.tierStatus()).state === 'connected', 'A connected again');
  process.stderr.write(`replay: B served A's ${expected.size} changes and the clear ${tookMs.toFixed(0)} ms after the restore (pending on A during the cut: ${during.pendingChanges})\n`);
});

test('both sides wrote the same item during the cut: every daemon and Redis end with the replayed value', async () => {
  const { server, proxy, a, b } = await setup();
  const onA = a.cache.withScope('both');
  const onB = b.cache.withScope('both');
  await onB.set('same', 'before the cut');
  await holdCopies(a, onA, ['same']);

  await cut(proxy, a, 'reset');
  await onA.set('same', 'A during the cut');
  await onB.set('same', 'B during the cut');
  expect(await valueOf(onB, 'same')).toBe('B during the cut');

  proxy.restore();
  const expected = new Map([['same', 'A during the cut']]);
  await converged((id) => valueOf(onB, id), expected, 'B serves the replayed value');
  await converged((id) => valueOf(onA, id), expected, 'A serves the replayed value');
  const [inRedis] = await sharedValues(server.pipeline, [{ scope: ['both'], id: 'same' }]);
  expect(inRedis).toContain('A during the cut');
});

test('more changes than the bound: the scope is written through whole, and every daemon agrees with Redis', async () => {
  const { server, proxy, a, b } = await setup({ extra: ['--tier-max-pending', '3'] });
  const onA = a.cache.withScope('many');
  const onB = b.cache.withScope('many');
  for (const id of ['d0', 'd1']) await onB.set(id, `${id} by B`);
  await holdCopies(a, onA, ['d0', 'd1']);

  await cut(proxy, a, 'reset');
  const expected = new Map<string, unknown>();
  for (let n = 0; n < 12; n++) {
    await onA.set(`a${n}`, `a${n} by A`);
    expected.set(`a${n}`, `a${n} by A`);
  }
  for (const id of ['d0', 'd1']) {
    await onA.delete(id);
    expected.set(id, undefined);
  }
  // B writes in the same scope meanwhile: the whole scope's clear may take it away, never leave it stale.
  await onB.set('other', 'B during the cut');
  const during = await a.tierStatus();
  // The scope `many` whole, and the probe's set.
  expect(during.pendingChanges).toBe(2);

  proxy.restore();
  const tookMs = await converged((id) => valueOf(onB, id), expected, 'B serves what A changed during the cut');
  await eventually(async () => (await a.tierStatus()).pendingChanges === 0, 'nothing pending on A');
  const ids = [...expected.keys(), 'other'];
  await eventually(async () => {
    const inRedis = await sharedValues(server.pipeline, ids.map((id) => ({ scope: ['many'], id })));
    for (const [at, id] of ids.entries()) {
      const [onAValue, onBValue] = [await valueOf(onA, id), await valueOf(onB, id)];
      if (onAValue !== onBValue) return false;
      if ((onAValue === undefined) !== (inRedis[at] === undefined || !inRedis[at]!.includes(String(onAValue)))) return false;
    }
    return true;
  }, 'A, B and Redis agree on every item');
  process.stderr.write(`replay past the bound (3): B served A's ${expected.size} changes ${tookMs.toFixed(0)} ms after the restore\n`);
});

test('a daemon killed while cut off, and restarted still cut off: its acknowledged writes reach the other daemon once Redis is back', async () => {
  const { proxy, a, b, aOptions } = await setup();
  const onB = b.cache.withScope('kept');
  await onB.set('seed', 'seed');
  await holdCopies(a, a.cache.withScope('kept'), ['seed']);
  // A knows where the scope's change log stands across a restart (else it drops the scope's copies at start).
  const positions = join(a.dir, 'data', 'tier-positions.json');
  await eventually(async () => (await readFile(positions, 'utf8').catch(() => '')).includes('"kept"'), 'A kept its position');

  await cut(proxy, a, 'reset');
  const expected = new Map<string, unknown>();
  for (let n = 0; n < 5; n++) {
    await a.cache.withScope('kept').set(`k${n}`, `k${n} by A`);
    expected.set(`k${n}`, `k${n} by A`);
  }
  await a.cache.withScope('kept').delete('seed');
  expected.set('seed', undefined);
  const pendingFile = join(a.dir, 'data', 'tier-pending.json');
  const mode = (await stat(pendingFile)).mode & 0o777;
  await a.kill();

  const again = await startTierDaemon({ ...aOptions, dir: a.dir });
  const restarted = await again.tierStatus();
  expect(restarted.state).toBe('degraded');
  expect(restarted.pendingChanges).toBeGreaterThanOrEqual(6);
  expect(await valueOf(again.cache.withScope('kept'), 'k0')).toBe('k0 by A');

  proxy.restore();
  const tookMs = await converged((id) => valueOf(onB, id), expected, 'B serves what A wrote before it was killed');
  await eventually(async () => (await again.tierStatus()).pendingChanges === 0, 'nothing pending on A');
  process.stderr.write(`replay after a restart: ${restarted.pendingChanges} changes pending at start (file mode ${mode.toString(8)}), on B ${tookMs.toFixed(0)} ms after the restore\n`);
  expect(mode).toBe(0o600);
});

test("a getset's write cut off, and its lease run out: its write-through is refused for the newer lease's write, and A drops its copy", async () => {
  const { server, proxy, a, b } = await setup();
  const onA = a.cache.withScope('fenced');
  const onB = b.cache.withScope('fenced');
  const before = await a.tierStatus();
  const held = await onA.getset('item');
  const granted = await a.tierStatus();
  expect(held.item).toBeNull();
  // A took the item's lease in Redis (no local fallback): its write is fenced.
  expect([granted.leases, granted.localFallbacks]).toEqual([before.leases + 1, before.localFallbacks]);
  proxy.cut('blackhole');
  // Default mode: acknowledged locally once the fenced write times out, and kept to be written through.
  await held.set('A under its lease');
  await held.release();
  expect((await a.tierStatus()).pendingChanges).toBe(1);

  // A's lease runs out (A cannot renew it): B takes the item's lease, computes and writes a newer value.
  const taken = await onB.getset('item');
  expect(taken.item).toBeNull();
  await taken.set('B under a newer lease');
  await taken.release();
  const byB = await sharedItem(server.cli, { scope: ['fenced'], id: 'item' });
  expect(byB?.v).toContain('B under a newer lease');

  proxy.restore();
  await eventually(async () => (await a.tierStatus()).pendingChanges === 0, 'A wrote through what it kept');
  const after = await a.tierStatus();
  // Nothing wrote the item after B: its hash (value and fencing number) is the one B wrote.
  expect(await sharedItem(server.cli, { scope: ['fenced'], id: 'item' })).toEqual(byB);
  expect(await valueOf(onB, 'item')).toBe('B under a newer lease');
  expect(await valueOf(onA, 'item')).toBe('B under a newer lease');
  expect(after.fencedWrites).toBe(before.fencedWrites + 1);
  process.stderr.write(`fenced replay: Redis kept B's write (fence ${byB?.f}); A's fenced writes ${before.fencedWrites} -> ${after.fencedWrites}\n`);
});

test('a write-through Redis answers with an error (an ACL refuses it) is given up and logged: it does not hold up catching up on other scopes', async () => {
  // A's Redis user may read but not write: its writes while connected are refused (and never kept), but one made while
  // cut off only timed out, so it waits to be written through, and Redis refuses it then.
  const server = await startRedisServer({ users: [{ name: 'reader', password: 'reader secret', rules: readOnlyRules() }] });
  const proxy = await startTcpProxy({ port: server.port });
  const [a, b] = await Promise.all([
    startTierDaemon({ tier: proxy.url, username: 'reader', password: 'reader secret', ...CUT_SIDE }),
    startTierDaemon({ tier: server.url, ...HEALTHY_TIER }),
  ]);
  await b.cache.withScope('other').set('item', 'before the cut');
  expect(await valueOf(a.cache.withScope('other'), 'item')).toBe('before the cut');
  await cut(proxy, a, 'blackhole');
  await a.cache.withScope('mine').set('item', 'by A during the cut');
  expect((await a.tierStatus()).pendingChanges).toBeGreaterThan(0);
  await b.cache.withScope('other').set('item', 'by B during the cut');
  proxy.restore();
  // Before the fix, the refused write-through was tried again every second and catching up never came to an end.
  await eventually(async () => {
    const status = await a.tierStatus();
    return status.state === 'connected' && status.pendingChanges === 0;
  }, 'A is connected, with nothing waiting');
  expect(await valueOf(a.cache.withScope('other'), 'item')).toBe('by B during the cut');
  // Redis never had A's write.
  expect(await valueOf(b.cache.withScope('mine'), 'item')).toBeUndefined();
  expect((await a.tierStatus()).refused).toBeGreaterThan(0);
});

test("a write Redis took after an earlier failed write of the same item forgets the waiting one: another machine's newer write is applied, and the write-through does not undo it", async () => {
  const { server, proxy, a, b } = await setup();
  const onA = a.cache.withScope('again');
  const onB = b.cache.withScope('again');
  await cut(proxy, a, 'blackhole');
  await onA.set('x', 'x1 by A during the cut');
  // A getset holds x (a local hit: no lease), so the write-through leaves x waiting until it is released; its write, a
  // plain set, goes to Redis meanwhile.
  const held = await onA.getset('x');
  expect(held.item).not.toBeNull();
  proxy.restore();
  await eventually(async () => (await a.tierStatus()).state !== 'degraded', 'A reaches Redis again');
  await held.set('x2 by A after the cut');
  const x = [{ scope: ['again'], id: 'x' }];
  expect((await sharedValues(server.pipeline, x))[0]).toContain('x2 by A after the cut');
  await onB.set('x', 'x3 by B');
  await held.release();
  await eventually(async () => (await a.tierStatus()).pendingChanges === 0, 'A wrote through what it kept');
  // Before the fix, x stayed waiting: A's change log skipped B's write, and the write-through sent A's x2 over it.
  expect((await sharedValues(server.pipeline, x))[0]).toContain('x3 by B');
  const expected = new Map([['x', 'x3 by B']]);
  await converged((id) => valueOf(onA, id), expected, "A serves B's newer write");
  await converged((id) => valueOf(onB, id), expected, "B serves its own write");
});

/**
 * Two daemons on one Redis, A through a proxy as a user who may only read: its write-throughs are refused. B starts
 * first and sets the tier's identity (A may not): else A, finding none, would drop every shared scope on reconnecting.
 */
async function setupReader(extra: string[] = []) {
  const server = await startRedisServer({ users: [{ name: 'reader', password: 'reader secret', rules: readOnlyRules() }] });
  const proxy = await startTcpProxy({ port: server.port });
  const b = await startTierDaemon({ tier: server.url, ...HEALTHY_TIER });
  await eventually(async () => (await b.tierStatus()).state === 'connected', 'B is connected');
  const a = await startTierDaemon({ tier: proxy.url, username: 'reader', password: 'reader secret', ...CUT_SIDE, extra });
  return { server, proxy, a, b };
}

async function settledConnected(daemon: TierDaemon): Promise<void> {
  await eventually(async () => {
    const status = await daemon.tierStatus();
    return status.state === 'connected' && status.pendingChanges === 0;
  }, 'the daemon is connected, with nothing waiting');
}

test("a write-through given up keeps the local copy: the daemon goes on serving its own acknowledged value, logged and counted, which other machines do not see", async () => {
  const { proxy, a, b } = await setupReader();
  await b.cache.withScope('mine').set('item', 'by B before the cut');
  expect(await valueOf(a.cache.withScope('mine'), 'item')).toBe('by B before the cut');
  await cut(proxy, a, 'blackhole');
  await a.cache.withScope('mine').set('item', 'by A during the cut');
  expect(await valueOf(a.cache.withScope('mine'), 'item')).toBe('by A during the cut');
  proxy.restore();
  await settledConnected(a);
  // Before the fix, the given-up write-through deleted A's acknowledged value, its only copy.
  expect(await valueOf(a.cache.withScope('mine'), 'item')).toBe('by A during the cut');
  expect(await valueOf(b.cache.withScope('mine'), 'item')).toBe('by B before the cut');
  expect((await a.tierStatus()).refused).toBeGreaterThan(0);
  expect(a.log.join('\n')).toContain('is not written through, it failed again');
});

test("a whole scope's write-through that Redis refuses (its clear, then each item) is given up: nothing waits, and the tier is connected", async () => {
  const { proxy, a, b } = await setupReader(['--tier-max-pending', '2']);
  await b.cache.withScope('many').set('b0', 'by B before the cut');
  // A follows the scope from before the cut: a scope first used during it is dropped once its position is known, all
  // but what still waits, and a change given up no longer waits.
  expect(await valueOf(a.cache.withScope('many'), 'b0')).toBe('by B before the cut');
  await cut(proxy, a, 'blackhole');
  for (let n = 0; n < 3; n++) await a.cache.withScope('many').set(`a${n}`, `a${n} by A during the cut`);
  // The probe's set and the scope `many` whole.
  expect((await a.tierStatus()).pendingChanges).toBe(2);
  proxy.restore();
  // Before the fix, the refused clear of `many` was tried again every second: A stayed catching-up, 1 change waiting.
  await settledConnected(a);
  // Given up: A keeps its own writes, which B does not see.
  expect(await valueOf(a.cache.withScope('many'), 'a0')).toBe('a0 by A during the cut');
  expect(await valueOf(b.cache.withScope('many'), 'a0')).toBeUndefined();
  expect(await valueOf(a.cache.withScope('many'), 'b0')).toBe('by B before the cut');
});

test('a clear of the root scope that Redis refuses is given up: nothing waits, and the tier is connected', async () => {
  const { proxy, a, b } = await setupReader();
  await b.cache.withScope('kept').set('b0', 'by B before the cut');
  await cut(proxy, a, 'blackhole');
  await a.cache.clear();
  expect((await a.tierStatus()).pendingChanges).toBe(1);
  proxy.restore();
  // Before the fix, the refused clears were tried again every second: A stayed catching-up, 1 change waiting.
  await settledConnected(a);
  expect(await valueOf(a.cache.withScope('kept'), 'b0')).toBe('by B before the cut');
});

test("a scope written through whole: an item another daemon wrote after the scope's clear, before A's write-through reached it, keeps that write in Redis and on both daemons", async () => {
  const { server, proxy, a, b } = await setup({ extra: ['--tier-max-pending', '3'] });
  const onA = a.cache.withScope('late');
  const onB = b.cache.withScope('late');
  await cut(proxy, a, 'reset');
  for (let n = 0; n < 6; n++) await onA.set(`a${n}`, `a${n} by A during the cut`);
  await onA.set('x', 'x by A during the cut');
  // A getset holds x (a local hit: the local lock alone) across the restore: the scope's write-through clears the
  // scope, sends the other items, and leaves x waiting until it is released.
  const held = await onA.getset('x');
  expect(held.item).not.toBeNull();
  const before = await a.tierStatus();
  proxy.restore();
  // The clear went (the items sent after it reach B), and only x waits.
  await converged((id) => valueOf(onB, id), new Map([['a0', 'a0 by A during the cut']]), "A's items reach B");
  await eventually(async () => (await a.tierStatus()).pendingChanges === 1, 'only x waits on A');
  await onB.set('x', 'x by B after the clear');
  await held.release();
  await eventually(async () => (await a.tierStatus()).pendingChanges === 0, 'x is written through');
  // Before the fix, x went plain after the clear: A's older copy overwrote B's newer write in Redis.
  const [inRedis] = await sharedValues(server.pipeline, [{ scope: ['late'], id: 'x' }]);
  expect(inRedis).toContain('x by B after the clear');
  const expected = new Map([['x', 'x by B after the clear']]);
  await converged((id) => valueOf(onB, id), expected, "B serves its own write");
  await converged((id) => valueOf(onA, id), expected, "A serves B's write");
  expect((await a.tierStatus()).fencedWrites).toBe(before.fencedWrites + 1);
});

test("a delete and a clear made while cut off stand when A reads the items through Redis before they are written through: A serves no old copy, and nobody gets it back", async () => {
  const { server, proxy, a, b } = await setup();
  const [onA, onB] = [a.cache.withScope('r'), b.cache.withScope('r')];
  await onB.set('x', 'x by B');
  await onB.withScope('c').set('y', 'y by B');
  await holdCopies(a, onA, ['x']);
  await holdCopies(a, onA.withScope('c'), ['y']);

  await cut(proxy, a, 'reset');
  await onA.delete('x');
  await onA.withScope('c').clear();
  expect(await valueOf(onA, 'x')).toBeUndefined();
  expect(await valueOf(onA.withScope('c'), 'y')).toBeUndefined();

  // Redis answers reads again but refuses writes for now (OOM, which a write-through tries again): A's delete and
  // clear wait, while its reads go through to Redis's old copies.
  await server.cli('CONFIG', 'SET', 'maxmemory-policy', 'noeviction');
  await server.cli('CONFIG', 'SET', 'maxmemory', '1');
  proxy.restore();
  await eventually(async () => (await a.tierStatus()).state !== 'degraded', 'A reaches Redis again');
  const during = await a.tierStatus();
  // The delete, the clear and the probe's set.
  expect(during.pendingChanges).toBe(3);
  // Before the fix A read Redis's old copies and kept them: `expected 'x by B' to be undefined`.
  expect(await valueOf(onA, 'x')).toBeUndefined();
  expect(await valueOf(onA.withScope('c'), 'y')).toBeUndefined();
  const after = await a.tierStatus();
  expect(after).toMatchObject({ state: 'catching-up', pendingChanges: 3 });
  expect(after.sharedHits).toBe(during.sharedHits);

  await server.cli('CONFIG', 'SET', 'maxmemory', '0');
  await eventually(async () => (await a.tierStatus()).pendingChanges === 0, 'A writes its changes through');
  // Before the fix the delete's write-through sent the kept copy as a set, and A kept y for good.
  for (const cache of [onA, onB]) {
    expect(await valueOf(cache, 'x')).toBeUndefined();
    expect(await valueOf(cache.withScope('c'), 'y')).toBeUndefined();
  }
  expect(await sharedValues(server.pipeline, [{ scope: ['r'], id: 'x' }])).toEqual([undefined]);
});

test("a getset's write kept across a cut, and Redis loses its data meanwhile: the write-through reaches Redis unfenced by the lost counter, and another daemon's getset of the item then writes", async () => {
  const { server, proxy, a, b } = await setup();
  const onA = a.cache.withScope('lost');
  const onB = b.cache.withScope('lost');
  // The scope's fencing counter climbs before the loss: A's lease is granted well above where it restarts after it.
  for (let n = 0; n < 5; n++) await onB.set(`other${n}`, `other ${n}`);
  const held = await onA.getset('item');
  expect(held.item).toBeNull();
  await cut(proxy, a, 'reset');
  await held.set('A under its lease');
  await held.release();
  expect((await a.tierStatus()).pendingChanges).toBeGreaterThanOrEqual(1);

  // Redis loses its data during the cut (as a restart without persistence would).
  await server.cli('FLUSHALL');
  const before = await a.tierStatus();
  proxy.restore();
  await eventually(async () => (await a.tierStatus()).pendingChanges === 0, 'A wrote through what it kept');
  const written = await sharedItem(server.cli, { scope: ['lost'], id: 'item' });
  expect(written?.v).toContain('A under its lease');

  // B computes the item under its own lease: Redis takes its write (before the fix: CACHE_LEASE_LOST, for A's
  // write-through carried the fence of its lease, above the counter that restarted from nothing).
  const taken = await onB.getset('item');
  await taken.set('B under a lease after the loss');
  await taken.release();
  const byB = await sharedItem(server.cli, { scope: ['lost'], id: 'item' });
  expect(byB?.v).toContain('B under a lease after the loss');
  const counter = Number(await server.cli('GET', new TierKeys('hoard').fenceCounter('lost')));
  expect(Number(written?.f)).toBeLessThanOrEqual(counter);
  expect(Number(byB?.f)).toBeLessThanOrEqual(counter);
  await converged((id) => valueOf(onA, id), new Map([['item', 'B under a lease after the loss']]), "A serves B's write");
  const after = await a.tierStatus();
  process.stderr.write(`lost data: A's write-through went at fence ${written?.f} (counter ${counter} after B's lease); A's fenced writes ${before.fencedWrites} -> ${after.fencedWrites}\n`);
});

test("a getset's write kept across a cut, and Redis loses its data meanwhile: another daemon's write of the item after the loss stands, even with the counter past the old fence", async () => {
  const { server, proxy, a, b } = await setup();
  const onA = a.cache.withScope('lost');
  const onB = b.cache.withScope('lost');
  for (let n = 0; n < 3; n++) await onB.set(`other${n}`, `other ${n}`);
  const held = await onA.getset('item');
  await cut(proxy, a, 'reset');
  await held.set('A under its lease');
  await held.release();

  await server.cli('FLUSHALL');
  // After the loss B writes the item (at a fence below A's old one), then enough else that the counter passes it.
  await onB.set('item', 'B after the loss');
  for (let n = 0; n < 10; n++) await onB.set(`later${n}`, `later ${n}`);
  const byB = await sharedItem(server.cli, { scope: ['lost'], id: 'item' });
  const before = await a.tierStatus();
  proxy.restore();
  await eventually(async () => (await a.tierStatus()).pendingChanges === 0, 'A wrote through what it kept');
  // Before the fix A's write-through went fenced by its old lease's number, above B's: it overwrote B's newer write.
  expect(await sharedItem(server.cli, { scope: ['lost'], id: 'item' })).toEqual(byB);
  await converged((id) => valueOf(onA, id), new Map([['item', 'B after the loss']]), "A serves B's write");
  expect((await a.tierStatus()).fencedWrites).toBe(before.fencedWrites + 1);
  expect(a.log.join('\n')).toContain("as when the waiting changes' fences were taken");
});

test("a getset's write kept across a cut while only its scope's keys are lost (a Cluster shard restarted empty, the tier's identity on another): another daemon's later write of the item stands", async () => {
  const { server, proxy, a, b } = await setup();
  const onA = a.cache.withScope('lost');
  const onB = b.cache.withScope('lost');
  for (let n = 0; n < 3; n++) await onB.set(`other${n}`, `other ${n}`);
  const held = await onA.getset('item');
  await cut(proxy, a, 'reset');
  await held.set('A under its lease');
  await held.release();

  // The scope's keys go (its counter, items, leases, change log); the tier's identity stays, so no check finds a loss.
  const dropped = await server.cli('EVAL', "local keys = redis.call('KEYS', ARGV[1]) for _, key in ipairs(keys) do redis.call('DEL', key) end return #keys", '0', '{hoard:lost}*');
  expect(Number(dropped)).toBeGreaterThan(0);
  expect(await server.cli('EXISTS', 'hoard:id')).toBe('1');
  // After the loss B writes the item, then enough else that a counter restarted from nothing would pass A's old number.
  await onB.set('item', 'B after the loss');
  for (let n = 0; n < 10; n++) await onB.set(`later${n}`, `later ${n}`);
  const byB = await sharedItem(server.cli, { scope: ['lost'], id: 'item' });
  const before = await a.tierStatus();
  proxy.restore();
  await eventually(async () => (await a.tierStatus()).pendingChanges === 0, 'A wrote through what it kept');
  // Before the fix the counter restarted at 1: A's write-through, fenced by its old lease's number (4), above B's (1),
  // overwrote B's newer write. Now a new counter starts at Redis's time in microseconds, above every older number.
  expect(await sharedItem(server.cli, { scope: ['lost'], id: 'item' })).toEqual(byB);
  await converged((id) => valueOf(onA, id), new Map([['item', 'B after the loss']]), "A serves B's write");
  expect((await a.tierStatus()).fencedWrites).toBe(before.fencedWrites + 1);
});
