import { expect, test } from 'vitest';
import { isCacheError } from '../src/errors.js';
import { eventually, track } from './conformance/support.js';
import { startRedisServer } from './support/redis-server.js';
import { sharedItem, startTierDaemon } from './support/tier-daemon.js';

const REPETITIONS = 50;

test(`fencing: a holder paused past its lease is refused with CACHE_LEASE_LOST, and the stored value never goes back (${REPETITIONS} times)`, async () => {
  const server = await startRedisServer();
  // A short lease, so that each repetition waits for one to lapse in well under a second.
  const leaseMs = 300;
  const [first, second] = await Promise.all([startTierDaemon({ tier: server.url, leaseMs }), startTierDaemon({ tier: server.url, leaseMs })]);
  const onFirst = first.cache.withScope('fence');
  const onSecond = second.cache.withScope('fence');
  let refusals = 0;
  const otherOutcomes: string[] = [];
  const regressions: string[] = [];
  for (let r = 0; r < REPETITIONS; r++) {
    // An item new to both daemons each time: a getset that finds a local copy holds the local lock alone (no lease).
    const id = `contended ${r}`;
    const held = await onFirst.getset(id);
    // Frozen: its daemon can neither renew the lease nor release it.
    first.pause();
    let paused = true;
    try {
      // The other machine's client waits for the lease to lapse, computes and writes.
      const taken = await onSecond.getset(id);
      await taken.set(`round ${r} from the second`);
      await taken.release();
    } finally {
      if (paused) first.resume();
      paused = false;
    }
    const outcome = await held.set(`round ${r} from the first`).then(
      () => 'accepted',
      (error: unknown) => (isCacheError(error, 'CACHE_LEASE_LOST') ? 'refused' : String(error)),
    );
    await held.release();
    if (outcome === 'refused') refusals++;
    else otherOutcomes.push(`round ${r}: ${outcome}`);

    const expected = `round ${r} from the second`;
    for (const [name, cache] of [['first', onFirst], ['second', onSecond]] as const) {
      await using got = await cache.get(id);
      const value = await got.item?.value();
      if (value !== expected) regressions.push(`round ${r}: the ${name} daemon served ${JSON.stringify(value)}`);
    }
    const shared = await sharedItem(server.cli, { scope: ['fence'], id });
    if (!shared?.v?.includes(expected) || shared.d !== undefined) regressions.push(`round ${r}: Redis holds ${JSON.stringify(shared)}`);
  }
  const status = await first.tierStatus();
  process.stderr.write(
    `fencing: ${REPETITIONS} holders paused past a ${leaseMs} ms lease: ${refusals} writes refused with CACHE_LEASE_LOST, ` +
      `${regressions.length} regressions; the first daemon counts ${status.fencedWrites} fenced writes\n`,
  );
  expect(otherOutcomes).toEqual([]);
  expect(regressions).toEqual([]);
  expect(refusals).toBe(REPETITIONS);
  expect(status.fencedWrites).toBe(REPETITIONS);
});

test('holder dies: a daemon holding a lease is SIGKILLed; a waiter on another daemon is granted within the lease time + 1 s', async () => {
  const server = await startRedisServer();
  const leaseMs = 1500;
  const [holder, other] = await Promise.all([startTierDaemon({ tier: server.url, leaseMs }), startTierDaemon({ tier: server.url, leaseMs })]);
  await holder.cache.withScope('dies').getset('held');
  const waiting = track(other.cache.withScope('dies').getset('held'));
  // The waiter's daemon holds its own local lock while it waits for the lease.
  await eventually(async () => (await other.cache.status()).locksHeld === 1, 'the waiter took its local lock');
  expect(waiting.settled).toBe(false);
  const killedAt = performance.now();
  const killed = holder.kill();
  const granted = await waiting.promise;
  const grantedMs = performance.now() - killedAt;
  await killed;
  process.stderr.write(`holder dies: a waiter on another daemon was granted ${grantedMs.toFixed(0)} ms after the SIGKILL (lease ${leaseMs} ms)\n`);
  expect(granted.item).toBe(null);
  expect(grantedMs).toBeLessThan(leaseMs + 1000);
  await granted.set('from the waiter');
  await granted.release();
  expect((await sharedItem(server.cli, { scope: ['dies'], id: 'held' }))?.v).toContain('from the waiter');
});

test('a release wakes a waiter on another daemon at once, not when the lease would lapse', async () => {
  const server = await startRedisServer();
  const leaseMs = 20_000;
  const [holder, other] = await Promise.all([startTierDaemon({ tier: server.url, leaseMs }), startTierDaemon({ tier: server.url, leaseMs })]);
  const held = await holder.cache.withScope('handoff').getset('item');
  const waiting = track(other.cache.withScope('handoff').getset('item'));
  await eventually(async () => (await other.cache.status()).locksHeld === 1, 'the waiter took its local lock');
  await held.set('from the holder');
  const releasedAt = performance.now();
  await held.release();
  const granted = await waiting.promise;
  const handOffMs = performance.now() - releasedAt;
  process.stderr.write(`hand-off: a waiter on another daemon was granted ${handOffMs.toFixed(0)} ms after the release (lease ${leaseMs} ms)\n`);
  // Woken by the release's message: a waiter that only polled at the lease's remaining time would wait ~20 s.
  expect(handOffMs).toBeLessThan(leaseMs / 4);
  expect(await granted.item?.value()).toBe('from the holder');
  await granted.release();
});
