import { expect, onTestFinished, test } from 'vitest';
import { TierConnection, TierUnavailable } from '../daemon/tier-connection.js';
import type { TierStatus } from '../src/shared-tier.js';
import { type RedisCluster, startRedisCluster } from './support/redis-server.js';
import { sharedValues, startTierDaemon, type TierDaemon } from './support/tier-daemon.js';

/**
 * A stopped master of a Redis Cluster tier (SIGSTOP: its connections stay open and nothing answers): the scopes on the
 * other masters keep working, commands to its scopes fail at once once it is found down, and it comes back.
 */

/** The daemon's timeout for tier commands: short, so that finding the stopped master takes little of the test. */
const TIMEOUT_MS = 400;
const SLOTS = 16384;

/** The master (index into `cluster.nodes`) that serves `slot`, as startRedisCluster splits the slots. */
function ownerOf(slot: number, masters: number): number {
  for (let n = 0; n < masters; n++) if (slot < Math.floor((SLOTS * (n + 1)) / masters)) return n;
  throw new RangeError(`slot ${slot}`);
}

/**
 * Picks the master to stop and a scope name on it, and a scope name on another master. The master stopped serves
 * neither the tier's identity key nor its set of scope names (keys without a hash tag), so that only its scopes'
 * commands go to it.
 */
async function pickScopes(cluster: RedisCluster): Promise<{ stopped: number; other: number; downScope: string; upScope: string }> {
  const names = Array.from({ length: 30 }, (_, n) => `shard-${n}`);
  const replies = await cluster.pipeline([...names.map((name) => ['CLUSTER', 'KEYSLOT', `{hoard:${name}}`]), ['CLUSTER', 'KEYSLOT', 'hoard:id'], ['CLUSTER', 'KEYSLOT', 'hoard:scopes']]);
  const owners = replies.map((reply) => ownerOf(Number(/\d+/.exec(reply)![0]), cluster.nodes.length));
  const busy = new Set(owners.slice(names.length));
  const stopped = [0, 1, 2].find((n) => !busy.has(n))!;
  const downAt = owners.findIndex((owner, at) => at < names.length && owner === stopped);
  const upAt = owners.findIndex((owner, at) => at < names.length && owner !== stopped);
  if (downAt < 0 || upAt < 0) throw new Error(`${names.length} scope names do not fall on two masters`);
  return { stopped, other: owners[upAt]!, downScope: names[downAt]!, upScope: names[upAt]! };
}

/** Polls the daemon's tier status until `condition` holds, failing after a generous bound with the last status seen. */
async function statusUntil(daemon: TierDaemon, condition: (tier: TierStatus) => boolean, what: string, boundMs = 20_000): Promise<TierStatus> {
  const deadline = performance.now() + boundMs;
  for (;;) {
    const tier = await daemon.tierStatus();
    if (condition(tier)) return tier;
    if (performance.now() > deadline) throw new Error(`Timed out waiting until ${what}: ${JSON.stringify(tier)}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/** How long a read of an item that is nowhere takes (a local miss that asks the tier), in milliseconds. */
async function missMs(daemon: TierDaemon, scope: string, id: string): Promise<number> {
  const startedMs = performance.now();
  await using got = await daemon.cache.withScope(scope).get(id);
  expect(got.item ?? null).toBeNull();
  return performance.now() - startedMs;
}

test(
  "a stopped Cluster master: other masters' scopes keep working, commands to its scopes fail at once once it is " +
    'found down (status names it, the tier stays connected), and when it answers again it is back and a set made ' +
    'meanwhile is written through',
  async () => {
    const cluster = await startRedisCluster({ masters: 3 });
    const { stopped, other, downScope, upScope } = await pickScopes(cluster);
    const stoppedNode = cluster.nodes[stopped]!;
    const address = `127.0.0.1:${stoppedNode.port}`;
    const daemon = await startTierDaemon({ tier: cluster.urls, cluster: true, timeoutMs: TIMEOUT_MS });
    await statusUntil(daemon, (tier) => tier.state === 'connected', 'connected');
    await daemon.cache.withScope(upScope).set('before', 'up before');
    await daemon.cache.withScope(downScope).set('before', 'down before');
    expect(await daemon.tierStatus()).toMatchObject({ state: 'connected', errors: 0, sharedWrites: 2 });

    process.kill(stoppedNode.pid, 'SIGSTOP');
    let continued = false;
    const resume = (): void => {
      if (!continued) process.kill(stoppedNode.pid, 'SIGCONT');
      continued = true;
    };
    onTestFinished(resume);

    // Reads of its scope find it stopped: the first ones wait for their timeout. Each read is one step, in order.
    const findingMs: number[] = [];
    let tier = await daemon.tierStatus();
    for (let n = 0; n < 8 && !(tier.downNodes ?? []).includes(address); n++) {
      findingMs.push(Math.round(await missMs(daemon, downScope, `missing-${n}`)));
      tier = await daemon.tierStatus();
    }
    expect(tier.downNodes, `reads of the stopped master's scope took ${findingMs.join(', ')} ms; tier ${tier.state}, ${tier.lastError}`).toEqual([
      address,
    ]);
    // The tier stays connected (after catching up, when the change log's connection was the stopped master's).
    await statusUntil(daemon, (status) => status.state === 'connected' && status.downNodes?.[0] === address, 'connected with the master down');

    // Now each read of its scope fails at once (a miss), far under the timeout, and a set there is kept for later.
    const fastMs: number[] = [];
    for (let n = 0; n < 5; n++) fastMs.push(await missMs(daemon, downScope, `fast-${n}`));
    const setStartedMs = performance.now();
    await daemon.cache.withScope(downScope).set('while-down', 'set while its master was stopped');
    fastMs.push(performance.now() - setStartedMs);
    expect(fastMs.filter((ms) => ms >= TIMEOUT_MS / 2), `calls to the stopped master's scope took ${fastMs.map(Math.round).join(', ')} ms`).toEqual([]);

    // The other master's scope works throughout: writes reach Redis, reads are answered, nothing more fails.
    const errorsWhileDown = (await daemon.tierStatus()).errors;
    for (let n = 0; n < 5; n++) await daemon.cache.withScope(upScope).set(`during-${n}`, `up during ${n}`);
    for (let n = 0; n < 3; n++) await missMs(daemon, upScope, `missing-${n}`);
    const written = await sharedValues(
      cluster.nodes[other]!.pipeline,
      Array.from({ length: 5 }, (_, n) => ({ scope: [upScope], id: `during-${n}` })),
    );
    expect(written.map((value, n) => value?.includes(`up during ${n}`) === true)).toEqual([true, true, true, true, true]);
    tier = await daemon.tierStatus();
    expect(tier).toMatchObject({ state: 'connected', downNodes: [address], errors: errorsWhileDown });
    expect(tier.pendingChanges).toBeGreaterThanOrEqual(1);

    // It answers again: the heartbeat finds it back, and the set made meanwhile is written through.
    resume();
    tier = await statusUntil(daemon, (status) => status.downNodes?.length === 0 && status.pendingChanges === 0, 'the master is back and nothing waits');
    expect(tier.state).toBe('connected');
    const [whileDown] = await sharedValues(stoppedNode.pipeline, [{ scope: [downScope], id: 'while-down' }]);
    expect(whileDown).toContain('set while its master was stopped');
    process.stderr.write(
      `tier-cluster-shard: finding the stopped master took reads of ${findingMs.join(', ')} ms; then calls took ${fastMs.map((ms) => ms.toFixed(1)).join(', ')} ms\n`,
    );
  },
);

test('every master of a Cluster stopped: each is marked down as it is found, and then the tier is degraded; it comes back when they answer', async () => {
  const cluster = await startRedisCluster({ masters: 3 });
  const log: string[] = [];
  const connection = new TierConnection({ urls: cluster.urls, cluster: true, timeoutMs: TIMEOUT_MS, log: (line) => log.push(line) });
  onTestFinished(() => connection.close());
  await connection.open();
  const deadline = performance.now() + 20_000;
  const until = async (condition: () => boolean, what: string): Promise<void> => {
    while (!condition()) {
      if (performance.now() > deadline) throw new Error(`Timed out waiting until ${what}: ${JSON.stringify(connection.figures())}; log: ${log.join(' | ')}`);
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
  };
  await until(() => connection.up, 'connected');
  // A tag on each master.
  const tags = Array.from({ length: 30 }, (_, n) => `all-${n}`);
  const slots = await cluster.pipeline(tags.map((tag) => ['CLUSTER', 'KEYSLOT', `{${tag}}`]));
  const byMaster = new Map<number, string>();
  for (const [n, reply] of slots.entries()) {
    const owner = ownerOf(Number(/\d+/.exec(reply)![0]), 3);
    if (!byMaster.has(owner)) byMaster.set(owner, tags[n]!);
  }
  expect(byMaster.size).toBe(3);
  const keys = [...byMaster.values()].map((tag) => `{${tag}}k`);
  for (const key of keys) expect(await connection.run('set', (client) => client.send(key, ['SET', key, 'v']))).toBe('OK');

  for (const node of cluster.nodes) process.kill(node.pid, 'SIGSTOP');
  let continued = false;
  onTestFinished(() => {
    if (!continued) for (const node of cluster.nodes) process.kill(node.pid, 'SIGCONT');
  });
  // Commands to each master in turn, one at a time, until the tier is degraded (each fails: timed out, or refused
  // at once once its master is marked down).
  for (let n = 0; connection.up && n < 30; n++) {
    const key = keys[n % keys.length]!;
    await expect(connection.run('get', (client) => client.send(key, ['GET', key]))).rejects.toBeInstanceOf(TierUnavailable);
  }
  expect(connection.figures()).toMatchObject({ state: 'degraded', lastError: expect.stringMatching(/^every node is down/) });

  for (const node of cluster.nodes) process.kill(node.pid, 'SIGCONT');
  continued = true;
  await until(() => connection.up && connection.figures().downNodes.length === 0, 'connected again with no node down');
  for (const key of keys) expect(await connection.run('get', (client) => client.send(key, ['GET', key]))).toBe('v');
});
