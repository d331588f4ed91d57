import { expect, test } from 'vitest';
import type { Cache } from '../src/cache.js';
import type { TierStatus } from '../src/shared-tier.js';
import { eventually } from './conformance/support.js';
import { startRedisServer, startTcpProxy } from './support/redis-server.js';
import { HEALTHY_TIER, startTierDaemon } from './support/tier-daemon.js';

// A scope dropped after a cut (its change log trimmed past this daemon's position), on real daemons and a real
// redis-server: the drop's copies must never be served once Redis is reachable again, and the tier must say
// `catching-up` until the drop is done.

/** Items of the dropped scope that the cut-off daemon holds copies of: a few pages of the drop's walk. */
const ITEMS = 3000;
/** The items the other daemon changes during the cut: the last in key order, which a walk in key order reaches last. */
const CHANGED = 100;

const idOf = (n: number): string => `k${String(n).padStart(5, '0')}`;

async function valueOf(cache: Cache<unknown>, id: string): Promise<unknown> {
  await using got = await cache.get(id);
  return got.item === null ? undefined : await got.item.value();
}

test("a scope dropped after a cut (its log trimmed) serves none of its old copies once Redis answers again, and the tier says catching-up until the drop is done", async () => {
  const server = await startRedisServer();
  const proxy = await startTcpProxy({ port: server.port });
  // A finds the cut within 300 ms; B reaches Redis directly.
  const [a, b] = await Promise.all([startTierDaemon({ tier: proxy.url, timeoutMs: 300, leaseMs: 1500 }), startTierDaemon({ tier: server.url, ...HEALTHY_TIER })]);
  const [onA, onB] = [a.cache.withScope('big'), b.cache.withScope('big')];
  // A writes the scope: its local copies, and Redis's.
  for (let at = 0; at < ITEMS; at += 100) {
    await Promise.all(Array.from({ length: Math.min(100, ITEMS - at) }, (_, k) => onA.set(idOf(at + k), `${idOf(at + k)} by A`)));
  }
  // A scope A follows before the cut (a scope first used during it would be dropped too).
  await a.cache.withScope('probe').set('p', 'p');
  await eventually(async () => (await a.tierStatus()).state === 'connected', 'A is caught up on its own writes');
  const changed = Array.from({ length: CHANGED }, (_, k) => idOf(ITEMS - CHANGED + k));

  proxy.cut('reset');
  await eventually(async () => {
    await a.cache.withScope('probe').set('p', 'p');
    return (await a.tierStatus()).state === 'degraded';
  }, 'A finds the cut');
  for (const id of changed) await onB.set(id, `${id} by B during the cut`);
  // The log no longer reaches back to where A stopped reading it.
  expect(Number(await server.cli('XTRIM', '{hoard:big}c', 'MAXLEN', '1'))).toBeGreaterThan(0);

  proxy.restore();
  const restoredAt = performance.now();
  // Two loops side by side until A is connected and serves every change: one asks A's status, one reads the changed
  // items on A (last first: the old walk reached them last). A read begun once a status said A reaches Redis again
  // must never get A's old copy.
  const samples: { state: TierStatus['state']; droppedScopes: number; atMs: number }[] = [];
  const oldReads: string[] = [];
  let reachableSince: number | undefined;
  let connectedSince: number | undefined;
  let reads = 0;
  let done = false;
  const statusLoop = (async () => {
    while (!done) {
      const status = await a.tierStatus();
      const atMs = performance.now() - restoredAt;
      samples.push({ state: status.state, droppedScopes: status.droppedScopes, atMs });
      if (status.state !== 'degraded') reachableSince ??= atMs;
      if (status.state === 'connected') connectedSince ??= atMs;
    }
  })();
  const readLoop = (async () => {
    const fresh = new Set<string>();
    while (fresh.size < changed.length || connectedSince === undefined) {
      if (performance.now() - restoredAt > 30_000) throw new Error(`A still serves old copies 30 s after the restore: ${changed.filter((id) => !fresh.has(id)).length} left`);
      for (const id of [...changed].reverse()) {
        const reachable = reachableSince !== undefined;
        const value = await valueOf(onA, id);
        reads++;
        if (value === `${id} by B during the cut`) fresh.add(id);
        else if (reachable) oldReads.push(`${id}: ${JSON.stringify(value)} at ${(performance.now() - restoredAt).toFixed(0)} ms`);
      }
    }
  })();
  try {
    await readLoop;
  } finally {
    done = true;
    await statusLoop;
  }
  const status = await a.tierStatus();
  const connectedBeforeDrop = samples.filter((sample) => sample.state === 'connected' && sample.droppedScopes === 0);
  process.stderr.write(
    `drop of ${ITEMS} items after a trimmed log: Redis reachable again ${reachableSince?.toFixed(0)} ms after the restore, connected ${connectedSince?.toFixed(0)} ms; ` +
      `${reads} reads of the ${CHANGED} changed items, ${oldReads.length} old copies served once Redis was reachable (first: ${oldReads[0] ?? 'none'}); ` +
      `${connectedBeforeDrop.length} status samples said connected before the drop was done; dropped scopes ${status.droppedScopes}\n`,
  );
  expect(oldReads).toEqual([]);
  expect(connectedBeforeDrop).toEqual([]);
  expect(status).toMatchObject({ state: 'connected', droppedScopes: 1 });
  // Every item of the scope reads as Redis holds it: the changed ones as B wrote them, the others as A did.
  for (const n of [0, 1, ITEMS / 2, ITEMS - CHANGED - 1]) expect(await valueOf(onA, idOf(n))).toBe(`${idOf(n)} by A`);
  for (const id of changed) expect(await valueOf(onA, id)).toBe(`${id} by B during the cut`);
});
