import { expect, test } from 'vitest';
import type { Cache } from '../src/cache.js';
import { startRedisServer } from './support/redis-server.js';
import { HEALTHY_TIER, startTierDaemon } from './support/tier-daemon.js';

const CHANGES = 1000;
const GROUPS = 10;
/** Each group's item goes through this cycle, so that every change changes what a reader sees. */
const CYCLE = ['set', 'set', 'delete', 'set', 'clear'] as const;
/** README's stated bound for a healthy network. */
const BOUND_MS = 1000;
/** How long a reader polls before the test gives up on a change: a liveness bound, far above the stated one. */
const GIVE_UP_MS = 20_000;

async function valueOf(cache: Cache<unknown>): Promise<unknown> {
  await using got = await cache.get('item');
  return got.item === null ? undefined : await got.item.value();
}

function percentile(sorted: readonly number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;
}

test(`invalidation: ${CHANGES} sets, deletes and clears on one daemon are seen by reads on two others within ${BOUND_MS} ms (p99)`, async () => {
  // On a Unix socket: the daemons' `unix://` URLs.
  const server = await startRedisServer({ unixSocket: true });
  const [writer, ...readers] = await Promise.all([0, 1, 2].map(() => startTierDaemon({ tier: server.url, ...HEALTHY_TIER })));
  const group = (cache: Cache<unknown>, n: number): Cache<unknown> => cache.withScope('inv').withScope(`g${n}`);
  const delays: number[] = [];
  const counts = { set: 0, delete: 0, clear: 0 };
  for (let i = 0; i < CHANGES; i++) {
    const n = i % GROUPS;
    const op = CYCLE[Math.floor(i / GROUPS) % CYCLE.length]!;
    counts[op]++;
    const expected = op === 'set' ? `value ${i}` : undefined;
    const onWriter = group(writer!.cache, n);
    if (op === 'set') await onWriter.set('item', expected);
    else if (op === 'delete') await onWriter.delete('item');
    else await onWriter.clear();
    // The change is acknowledged: from now on, measure until each reader's first read that returns it.
    const acknowledgedAt = performance.now();
    const seenAfter = await Promise.all(
      readers.map(async (reader) => {
        const onReader = group(reader.cache, n);
        for (;;) {
          const value = await valueOf(onReader);
          const now = performance.now();
          if (value === expected) return now - acknowledgedAt;
          if (now - acknowledgedAt > GIVE_UP_MS) throw new Error(`change ${i} (${op}) not seen after ${GIVE_UP_MS} ms: a reader still serves ${JSON.stringify(value)}`);
        }
      }),
    );
    delays.push(Math.max(...seenAfter));
  }
  const sorted = [...delays].sort((a, b) => a - b);
  const statuses = await Promise.all(readers.map((reader) => reader.tierStatus()));
  process.stderr.write(
    `invalidation over ${CHANGES} changes (${counts.set} sets, ${counts.delete} deletes, ${counts.clear} clears), until both other daemons serve the change: ` +
      `p50 ${percentile(sorted, 50).toFixed(1)} ms, p99 ${percentile(sorted, 99).toFixed(1)} ms, max ${sorted.at(-1)!.toFixed(1)} ms; ` +
      `readers' invalidations ${statuses.map((status) => status.invalidations).join(', ')}, shared hits ${statuses.map((status) => status.sharedHits).join(', ')}\n`,
  );
  expect(percentile(sorted, 99)).toBeLessThan(BOUND_MS);
  for (const status of statuses) {
    expect(status.invalidations).toBeGreaterThan(0);
    expect(status.errors).toBe(0);
  }
  // The readers keep the copies they read (what made the invalidations needed): once read, an item is served locally.
  for (let n = 0; n < GROUPS; n++) await group(writer!.cache, n).set('item', `final ${n}`);
  for (const reader of readers) {
    for (let n = 0; n < GROUPS; n++) while ((await valueOf(group(reader.cache, n))) !== `final ${n}`);
    const before = await reader.tierStatus();
    for (let n = 0; n < GROUPS; n++) expect(await valueOf(group(reader.cache, n))).toBe(`final ${n}`);
    const after = await reader.tierStatus();
    expect(after.sharedHits + after.sharedMisses).toBe(before.sharedHits + before.sharedMisses);
  }
});
