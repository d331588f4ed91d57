import { expect, test } from 'vitest';
import { isCacheError } from '../src/errors.js';
import { eventually, track } from './conformance/support.js';
import { startRedisServer } from './support/redis-server.js';
import { sharedItem, startTierDaemon, type TierDaemon } from './support/tier-daemon.js';

const REPETITIONS = 50;
/** Pairs of daemons, each a holder and a taker, running their rounds side by side. */
const PAIRS = 5;
/** Short, so that each round waits little for the lease to lapse; the tier's timeout is then a third of it. */
const FENCE_LEASE_MS = 600;

interface Round {
  outcome: 'refused' | 'retry' | string;
  regressions: string[];
  /** Reads that found no value (a daemon whose tier was degraded for a moment) before the one checked. */
  missesServed: number;
}

/** A daemon's lease and fallback counts: a getset took a lease in Redis when leases went up by one and fallbacks not. */
async function leaseCounts(daemon: TierDaemon): Promise<[number, number, number]> {
  const status = await daemon.tierStatus();
  return [status.leases, status.localFallbacks, status.sharedWrites];
}

/**
 * One round on a fresh item: the holder takes the lease, its daemon is paused (SIGSTOP), the taker on the other daemon
 * waits for the lease to lapse, computes and writes, the holder's daemon is resumed and its client writes. `retry`
 * when a tier command timed out on the way (the machine too busy), so that a getset held the local lock alone: that
 * round did not test fencing, and another is run in its place.
 */
async function fencingRound(holder: TierDaemon, taker: TierDaemon, id: string, cli: (...args: string[]) => Promise<string>): Promise<Round> {
  const holderBefore = await leaseCounts(holder);
  const held = await holder.cache.withScope('fence').getset(id);
  const holderAfter = await leaseCounts(holder);
  if (held.item !== null || holderAfter[0] !== holderBefore[0] + 1 || holderAfter[1] !== holderBefore[1]) {
    await held.release();
    return { outcome: 'retry', regressions: [], missesServed: 0 };
  }
  // Frozen: its daemon can neither renew the lease nor release it.
  holder.pause();
  const expected = `${id} from the taker`;
  let tookLease: boolean;
  try {
    const takerBefore = await leaseCounts(taker);
    const taken = await taker.cache.withScope('fence').getset(id);
    await taken.set(expected);
    await taken.release();
    const takerAfter = await leaseCounts(taker);
    tookLease = takerAfter[0] === takerBefore[0] + 1 && takerAfter[1] === takerBefore[1] && takerAfter[2] === takerBefore[2] + 1;
  } finally {
    holder.resume();
  }
  const outcome = await held.set(`${id} from the paused holder`).then(
    () => 'accepted',
    (error: unknown) => (isCacheError(error, 'CACHE_LEASE_LOST') ? 'refused' : String(error)),
  );
  await held.release();
  const regressions: string[] = [];
  let missesServed = 0;
  for (const [name, daemon] of [['holder', holder], ['taker', taker]] as const) {
    // The holder's daemon has no copy: it reads Redis. Just resumed, its tier may be degraded for a moment (its
    // timers ran late: commands that Redis answered in time count as timed out), and then it serves a miss, which
    // is no value at all rather than an older one: read again until it serves one.
    let value: unknown;
    for (const startedAt = performance.now(); ; missesServed++) {
      await using got = await daemon.cache.withScope('fence').get(id);
      value = await got.item?.value();
      if (value !== undefined || performance.now() - startedAt > 10_000) break;
    }
    if (value !== expected) regressions.push(`${id}: the ${name}'s daemon served ${JSON.stringify(value)}`);
  }
  const shared = await sharedItem(cli, { scope: ['fence'], id });
  if (!shared?.v?.includes(expected) || shared.d !== undefined) regressions.push(`${id}: Redis holds ${JSON.stringify(shared)}`);
  // A taker that fell back to its local lock did not wait for the lease to lapse: the round tested nothing.
  return tookLease ? { outcome, regressions, missesServed } : { outcome: 'retry', regressions: [], missesServed };
}

test(`fencing: a holder paused past its lease is refused with CACHE_LEASE_LOST, and the stored value never goes back (${REPETITIONS} times)`, async () => {
  const server = await startRedisServer();
  const daemons = await Promise.all(Array.from({ length: 2 * PAIRS }, () => startTierDaemon({ tier: server.url, leaseMs: FENCE_LEASE_MS })));
  const rounds = await Promise.all(
    Array.from({ length: PAIRS }, async (_, pair) => {
      const [holder, taker] = [daemons[2 * pair]!, daemons[2 * pair + 1]!];
      const done: Round[] = [];
      let retries = 0;
      for (let r = 0; done.length < REPETITIONS / PAIRS; r++) {
        const round = await fencingRound(holder, taker, `pair ${pair} round ${r}`, server.cli);
        if (round.outcome !== 'retry') done.push(round);
        else if (++retries > REPETITIONS) throw new Error(`pair ${pair}: ${retries} rounds found the tier timing out`);
      }
      return { done, retries };
    }),
  );
  const all = rounds.flatMap((pair) => pair.done);
  const refusals = all.filter((round) => round.outcome === 'refused').length;
  const regressions = all.flatMap((round) => round.regressions);
  const fenced = (await Promise.all(daemons.filter((_, n) => n % 2 === 0).map((daemon) => daemon.tierStatus()))).reduce((sum, status) => sum + status.fencedWrites, 0);
  process.stderr.write(
    `fencing: ${all.length} holders paused past a ${FENCE_LEASE_MS} ms lease (${PAIRS} pairs of daemons side by side): ${refusals} writes refused with ` +
      `CACHE_LEASE_LOST, ${regressions.length} regressions; the holders' daemons count ${fenced} fenced writes; ` +
      `${rounds.reduce((sum, pair) => sum + pair.retries, 0)} rounds run again because a tier command timed out; ` +
      `${all.reduce((sum, round) => sum + round.missesServed, 0)} reads served a miss while a resumed daemon's tier recovered\n`,
  );
  expect(all.filter((round) => round.outcome !== 'refused').map((round) => round.outcome)).toEqual([]);
  expect(regressions).toEqual([]);
  expect(refusals).toBe(REPETITIONS);
  expect(fenced).toBeGreaterThanOrEqual(REPETITIONS);
});

test('holder dies: a daemon holding a lease is SIGKILLed; a waiter on another daemon is granted within the lease time + 1 s', async () => {
  const server = await startRedisServer();
  const leaseMs = 3000;
  const [holder, other] = await Promise.all([startTierDaemon({ tier: server.url, leaseMs }), startTierDaemon({ tier: server.url, leaseMs })]);
  await holder.cache.withScope('dies').getset('held');
  expect(await leaseCounts(holder)).toEqual([1, 0, 0]);
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
  // Granted the lease, not run on its local lock alone for want of a tier.
  expect(await leaseCounts(other)).toEqual([1, 0, 0]);
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
  expect(waiting.settled).toBe(false);
  const releasedAt = performance.now();
  await held.release();
  const granted = await waiting.promise;
  const handOffMs = performance.now() - releasedAt;
  process.stderr.write(`hand-off: a waiter on another daemon was granted ${handOffMs.toFixed(0)} ms after the release (lease ${leaseMs} ms)\n`);
  // Woken by the release's message: a waiter that only polled at the lease's remaining time would wait ~20 s.
  expect(handOffMs).toBeLessThan(leaseMs / 4);
  expect(await granted.item?.value()).toBe('from the holder');
  expect(await leaseCounts(other)).toEqual([1, 0, 0]);
  await granted.release();
});
