import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { expect, onTestFinished, test } from 'vitest';
import type { GetSetHandle } from '../src/index.js';
import { keySlot, NodeDown, TierConnection, TierUnavailable } from '../daemon/tier-connection.js';
import { TierKeys } from '../daemon/tier-keys.js';
import type { TierStatus } from '../src/shared-tier.js';
import { type RedisCluster, type RedisServer, startRedisCluster } from './support/redis-server.js';
import { HEALTHY_TIER, sharedItem, sharedValues, startTierDaemon, type TierDaemon } from './support/tier-daemon.js';

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

/**
 * The master holding the tier's identity (`hoard:id`), its address, the other masters' URLs, and a scope on another
 * master with that master.
 */
async function identityMasterAndScope(cluster: RedisCluster): Promise<{ master: RedisServer; address: string; others: string[]; upScope: string; upMaster: RedisServer }> {
  const names = Array.from({ length: 30 }, (_, n) => `healthy-${n}`);
  const replies = await cluster.pipeline([['CLUSTER', 'KEYSLOT', 'hoard:id'], ...names.map((name) => ['CLUSTER', 'KEYSLOT', `{hoard:${name}}`])]);
  const [identityMaster, ...owners] = replies.map((reply) => ownerOf(Number(/\d+/.exec(reply)![0]), cluster.nodes.length));
  const at = owners.findIndex((owner) => owner !== identityMaster);
  const master = cluster.nodes[identityMaster!]!;
  return { master, address: `127.0.0.1:${master.port}`, others: cluster.urls.filter((url) => url !== master.url), upScope: names[at]!, upMaster: cluster.nodes[owners[at]!]! };
}

/** Without full coverage, the other masters serve their slots however long a stopped one is down. */
async function withoutFullCoverage(cluster: RedisCluster): Promise<void> {
  for (const node of cluster.nodes) await node.cli('CONFIG', 'SET', 'cluster-require-full-coverage', 'no');
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
    // Connected: the change log's subscription, if it was the stopped master's, may be moving to another master, which
    // reads as catching-up for a moment (CI saw it once here); nothing else fails meanwhile.
    tier = await statusUntil(daemon, (status) => status.state === 'connected', 'connected while the master is stopped');
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

test("a master marked down gets no INFO either: a change log's run-id read for a key on it fails at once, and nothing piles up on it", async () => {
  const cluster = await startRedisCluster({ masters: 3 });
  const { stopped, downScope } = await pickScopes(cluster);
  const node = cluster.nodes[stopped]!;
  const address = `127.0.0.1:${node.port}`;
  const key = `{hoard:${downScope}}c`;
  const connection = new TierConnection({ urls: cluster.urls, cluster: true, timeoutMs: TIMEOUT_MS, log: () => {} });
  onTestFinished(() => connection.close());
  await connection.open();
  const until = async (condition: () => boolean, what: string): Promise<void> => {
    for (const deadline = performance.now() + 20_000; !condition(); ) {
      if (performance.now() > deadline) throw new Error(`Timed out waiting until ${what}: ${JSON.stringify(connection.figures())}`);
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
  };
  await until(() => connection.up, 'connected');
  const infoCalls = async (): Promise<number> => Number(/cmdstat_info:calls=(\d+)/.exec(await node.cli('INFO', 'commandstats'))?.[1] ?? 0);
  const before = await infoCalls();

  process.kill(node.pid, 'SIGSTOP');
  let continued = false;
  onTestFinished(() => {
    if (!continued) process.kill(node.pid, 'SIGCONT');
  });
  for (let n = 0; n < 10 && !connection.figures().downNodes.includes(address); n++) {
    await expect(connection.run('get', (client) => client.send(key, ['GET', key]))).rejects.toBeInstanceOf(TierUnavailable);
  }
  expect(connection.figures().downNodes).toEqual([address]);
  // As a catch-up retry asks it, every 250 ms per scope on that master. Before: the INFO was queued on the hung
  // master's connection (the call then timed out), one more each time.
  for (let n = 0; n < 5; n++) {
    await expect(connection.run('change log', async (client) => (await client.queueInfo(key, 'server')).reply)).rejects.toBeInstanceOf(NodeDown);
  }
  process.kill(node.pid, 'SIGCONT');
  continued = true;
  await until(() => connection.figures().downNodes.length === 0, 'the master answers again');
  // Only the count's own INFO (the one that read `before`) since.
  expect((await infoCalls()) - before).toBe(1);
  expect(await connection.run('change log', async (client) => (await client.queueInfo(key, 'server')).reply)).toMatch(/run_id:[0-9a-f]{40}/);
});

test("a daemon restarted while the tier identity's master is stopped: a getset in a scope on another master takes its lease, fenced against the identity it kept", async () => {
  const cluster = await startRedisCluster({ masters: 3 });
  await withoutFullCoverage(cluster);
  const { master, address, upScope, upMaster, others } = await identityMasterAndScope(cluster);
  // A first run reads the identity and keeps it with its waiting changes (tier-pending.json).
  const first = await startTierDaemon({ tier: [...others, master.url], cluster: true, timeoutMs: TIMEOUT_MS });
  await statusUntil(first, (tier) => tier.state === 'connected', 'the first run connected');
  const held = await getsetWithLease(first, upScope, 'before');
  await held.release();
  const identity = await master.cli('GET', 'hoard:id');
  await first.kill();
  expect(JSON.parse(await readFile(join(first.dir, 'data', 'tier-pending.json'), 'utf8'))).toMatchObject({ tierIdentity: identity });

  process.kill(master.pid, 'SIGSTOP');
  let continued = false;
  onTestFinished(() => {
    if (!continued) process.kill(master.pid, 'SIGCONT');
  });
  const again = await startTierDaemon({ dir: first.dir, tier: [...others, master.url], cluster: true, timeoutMs: TIMEOUT_MS });
  await statusUntil(again, (tier) => tier.state === 'connected' && (tier.downNodes ?? []).includes(address), 'connected with the identity master down', START_BOUND_MS);
  // Before: the identity could not be read, so every getset of every scope fell back to the local lock.
  const lease = await getsetWithLease(again, upScope, 'after');
  await lease.set('computed while the identity master was stopped');
  await lease.release();
  const [stored] = await sharedValues(upMaster.pipeline, [{ scope: [upScope], id: 'after' }]);
  expect(stored).toContain('computed while the identity master was stopped');
  process.kill(master.pid, 'SIGCONT');
  continued = true;
  await statusUntil(again, (tier) => tier.state === 'connected' && (tier.downNodes ?? []).length === 0, 'the identity master is back');
});

test('keySlot, which routes each command to its master without connecting, agrees with CLUSTER KEYSLOT on every kind of key the tier sends', async () => {
  const cluster = await startRedisCluster({ masters: 3 });
  const keys = new TierKeys('hoard');
  const tops = ['pages', '', 'caf\u00e9 \u{1F600}', '%7B}', 'a{b}c', 'x'.repeat(300)];
  const samples = [
    keys.identity,
    keys.scopeNames,
    ...tops.flatMap((top) => [keys.changeLog(top), keys.fenceCounter(top), keys.generations(top), keys.leases(top), keys.item(`${top}/:id`)]),
    // Hash-tag edge cases: an empty tag (the whole key), no closing brace, a brace closed before it opens.
    'a{}b',
    '{}',
    'a{b',
    '}a{b}',
    '{{a}}',
    '',
  ];
  const replies = await cluster.pipeline(samples.map((key) => ['CLUSTER', 'KEYSLOT', key]));
  expect(samples.map((key) => keySlot(key))).toEqual(replies.map((reply) => Number(/\d+/.exec(reply)![0])));
});

test('a key whose slot no master serves (a Cluster short of coverage) fails as its master were down, not as a programming mistake', async () => {
  const cluster = await startRedisCluster({ masters: 3 });
  await withoutFullCoverage(cluster);
  const key = '{uncovered}k';
  for (const node of cluster.nodes) await node.cli('CLUSTER', 'DELSLOTS', String(keySlot(key))).catch(() => '');
  const connection = new TierConnection({ urls: cluster.urls, cluster: true, timeoutMs: TIMEOUT_MS, log: () => {} });
  onTestFinished(() => connection.close());
  await connection.open();
  for (const deadline = performance.now() + 20_000; !connection.up; ) {
    if (performance.now() > deadline) throw new Error(`not connected: ${JSON.stringify(connection.figures())}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  // Before: node-redis's routing threw a TypeError ("Cannot read properties of undefined"), passed on as a mistake.
  await expect(connection.run('get', (client) => client.send(key, ['GET', key]))).rejects.toBeInstanceOf(NodeDown);
  expect(connection.figures()).toMatchObject({ state: 'connected', errors: 0 });
  const covered = '{covered}k';
  expect(await connection.run('set', (client) => client.send(covered, ['SET', covered, 'v']))).toBe('OK');
});

/** A getset in `scope` on `daemon` that must take a lease in Redis (leases up by one, no local fallback) and hold the lock. */
async function getsetWithLease(daemon: TierDaemon, scope: string, id: string): Promise<GetSetHandle<unknown>> {
  const before = await daemon.tierStatus();
  const held = await daemon.cache.withScope(scope).getset(id);
  const after = await daemon.tierStatus();
  if (held.set === null || after.leases !== before.leases + 1 || after.localFallbacks !== before.localFallbacks) {
    await held.release();
    throw new Error(`the getset of ${id} took no lease in Redis: ${JSON.stringify(after)}`);
  }
  return held;
}

test(
  "a fenced write saved across a cut, its scope's master restarted empty, other machines' leases past its fence and " +
    'a newer write of the item: the saved write is refused, never written over the newer value',
  async () => {
    const cluster = await startRedisCluster({ masters: 3 });
    const { stopped, downScope } = await pickScopes(cluster);
    const master = cluster.nodes[stopped]!;
    const address = `127.0.0.1:${master.port}`;
    const a = await startTierDaemon({ tier: cluster.urls, cluster: true, timeoutMs: TIMEOUT_MS });
    await statusUntil(a, (tier) => tier.state === 'connected', 'A connected');
    // A few writes first, so that A's lease has a fence above 1.
    for (let n = 0; n < 3; n++) await a.cache.withScope(downScope).set(`warm-${n}`, n);
    const held = await getsetWithLease(a, downScope, 'item');
    const oldFence = Number(await master.cli('GET', `{hoard:${downScope}}n`));

    // The scope's master stops answering: A's write under its lease is acknowledged locally and kept, with its fence.
    process.kill(master.pid, 'SIGSTOP');
    await held.set('from A, before its master restarted');
    await held.release();
    await statusUntil(a, (tier) => (tier.pendingChanges ?? 0) >= 1 && (tier.downNodes ?? []).includes(address), 'the write waits with its master down');
    // A is frozen (its write-through must come last), the master restarts empty (no dump, no AOF).
    const fencedBefore = (await a.tierStatus()).fencedWrites;
    a.pause();
    onTestFinished(() => a.resume());
    await master.restartEmpty();
    expect(await master.cli('DBSIZE')).toBe('0');
    for (const deadline = performance.now() + 20_000; !(await master.cli('CLUSTER', 'INFO')).includes('cluster_state:ok'); ) {
      if (performance.now() > deadline) throw new Error('the restarted master did not rejoin the cluster');
      await new Promise((resolve) => setTimeout(resolve, 50));
    }

    // Another machine writes the item, then takes more leases (with a counter restarted at 1, as before the fix, these
    // carried it past A's fence of 4).
    const b = await startTierDaemon({ tier: cluster.urls, cluster: true, ...HEALTHY_TIER });
    await statusUntil(b, (tier) => tier.state === 'connected', 'B connected');
    const taken = await getsetWithLease(b, downScope, 'item');
    expect(taken.item).toBeNull();
    await taken.set('from B, after the restart');
    await taken.release();
    const newFence = Number((await sharedItem(master.cli, { scope: [downScope], id: 'item' }))?.f);
    for (let n = 0; n < 6; n++) {
      const other = await getsetWithLease(b, downScope, `other-${n}`);
      await other.set(n);
      await other.release();
    }
    expect(Number(await master.cli('GET', `{hoard:${downScope}}n`))).toBeGreaterThan(oldFence);

    // A comes back and writes through what it kept: Redis refuses it (the fence was the lost data's), its copy goes.
    a.resume();
    const after = await statusUntil(a, (tier) => tier.pendingChanges === 0 && (tier.downNodes ?? []).length === 0, 'A wrote through what it kept');
    const shared = await sharedItem(master.cli, { scope: [downScope], id: 'item' });
    expect(shared?.v).toContain('from B, after the restart');
    expect(after.fencedWrites).toBeGreaterThan(fencedBefore);
    await using got = await a.cache.withScope(downScope).get('item');
    expect(await got.item?.value()).toBe('from B, after the restart');
    // Why: the restarted counter started at Redis's time in microseconds, so B's write is numbered above A's kept fence
    // (before the fix it restarted at 1: B's write went at 1, A's at 4 then overwrote it).
    expect(newFence).toBeGreaterThan(oldFence);
  },
);

test("a daemon cut off while its scope's master restarted empty, after another machine's change of an item it holds: it does not serve its stale copy", async () => {
  const cluster = await startRedisCluster({ masters: 3 });
  const { stopped, downScope } = await pickScopes(cluster);
  const master = cluster.nodes[stopped]!;
  const a = await startTierDaemon({ tier: cluster.urls, cluster: true, ...HEALTHY_TIER });
  const c = await startTierDaemon({ tier: cluster.urls, cluster: true, ...HEALTHY_TIER });
  await statusUntil(a, (tier) => tier.state === 'connected', 'A connected');
  await statusUntil(c, (tier) => tier.state === 'connected', 'C connected');
  // C holds its own copy, and its position has passed its own change (its tier catches up on nothing).
  await c.cache.withScope(downScope).set('item', 'old, from C');
  await a.cache.withScope(downScope).set('marker', 'seen');
  await statusUntil(c, (tier) => tier.invalidations >= 1 && tier.state === 'connected', 'C applied the marker');
  // C is cut off (frozen): A changes the item, the master restarts empty (the change and its log entry are lost),
  // and A writes again in the scope (a new change log).
  c.pause();
  onTestFinished(() => c.resume());
  await a.cache.withScope(downScope).set('item', 'new, from A');
  await master.restartEmpty();
  for (const deadline = performance.now() + 20_000; !(await master.cli('CLUSTER', 'INFO')).includes('cluster_state:ok'); ) {
    if (performance.now() > deadline) throw new Error('the restarted master did not rejoin the cluster');
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  await statusUntil(a, (tier) => tier.state === 'connected' && tier.pendingChanges === 0, 'A connected to the restarted master');
  await a.cache.withScope(downScope).set('after', 'written after the restart');
  c.resume();
  await statusUntil(c, (tier) => tier.state === 'connected' && tier.droppedScopes >= 1, 'C dropped the scope');
  await using got = await c.cache.withScope(downScope).get('item');
  // Its position's entry is gone from the new change log: the scope is dropped, a miss rather than the old copy.
  expect(await got.item?.value()).not.toBe('old, from C');
});

test(
  "the tier identity's master stopped while the subscription is remade: a scope on another master is caught up and " +
    "served (its local copy a local hit, another daemon's change seen, a getset takes a lease); when the master comes " +
    'back empty, the new identity drops the scopes',
  async () => {
    const cluster = await startRedisCluster({ masters: 3 });
    await withoutFullCoverage(cluster);
    const { master, address, upScope } = await identityMasterAndScope(cluster);
    // A's subscriber is made on its first seed, the identity's master: stopping it remakes the subscription.
    const others = cluster.urls.filter((url) => url !== master.url);
    const a = await startTierDaemon({ tier: [master.url, ...others], cluster: true, timeoutMs: TIMEOUT_MS });
    const b = await startTierDaemon({ tier: [...others, master.url], cluster: true, ...HEALTHY_TIER });
    await statusUntil(a, (tier) => tier.state === 'connected', 'A connected');
    await statusUntil(b, (tier) => tier.state === 'connected', 'B connected');
    await a.cache.withScope(upScope).set('kept', 'kept by A');
    await a.cache.withScope(upScope).set('item', 'first, from A');
    await b.cache.withScope(upScope).set('marker', 'names the scope in B');
    await statusUntil(a, (tier) => tier.invalidations >= 1 && tier.state === 'connected', "A applied B's marker");

    process.kill(master.pid, 'SIGSTOP');
    let continued = false;
    onTestFinished(() => {
      if (!continued) process.kill(master.pid, 'SIGCONT');
    });
    // A's subscriber is lost and made again on another master; its identity check finds the stopped master down; it
    // catches up the scope all the same.
    const caughtUp = await statusUntil(a, (tier) => tier.state === 'connected' && (tier.downNodes ?? []).includes(address), 'A caught up with the master down');
    expect(caughtUp.downNodes).toEqual([address]);

    // Its local copy is served as a hit: the tier is not asked (no shared read counted).
    const beforeKept = await a.tierStatus();
    await using kept = await a.cache.withScope(upScope).get('kept');
    expect(await kept.item?.value()).toBe('kept by A');
    const afterKept = await a.tierStatus();
    expect({ hits: afterKept.sharedHits, misses: afterKept.sharedMisses }).toEqual({ hits: beforeKept.sharedHits, misses: beforeKept.sharedMisses });

    // Another daemon's change there is applied within a liveness bound, and A reads it.
    const { invalidations } = await a.tierStatus();
    await b.cache.withScope(upScope).set('item', 'second, from B');
    await statusUntil(a, (tier) => tier.invalidations > invalidations, "A applied B's change", 10_000);
    await using item = await a.cache.withScope(upScope).get('item');
    expect(await item.item?.value()).toBe('second, from B');

    // A getset there takes a lease in Redis, not the local lock alone.
    const held = await getsetWithLease(a, upScope, 'leased');
    await held.set('under a lease');
    await held.release();

    // The master comes back empty: A's identity check, tried again meanwhile, finds another identity and drops the
    // shared scopes locally.
    const { droppedScopes } = await a.tierStatus();
    continued = true;
    await master.restartEmpty();
    const after = await statusUntil(
      a,
      (tier) => tier.droppedScopes > droppedScopes && tier.state === 'connected' && (tier.downNodes ?? []).length === 0,
      'A dropped its scopes for the new identity',
    );
    expect(after.droppedScopes).toBeGreaterThan(droppedScopes);
    expect(await master.cli('GET', 'hoard:id')).not.toBe('');
  },
);

/** How long a daemon started while a master is stopped may take to be connected with that master marked down. */
const START_BOUND_MS = 10_000;

test.each([
  { order: 'a healthy master first', stoppedFirst: false },
  { order: 'the stopped master first', stoppedFirst: true },
])(
  'a daemon started while a Cluster master is stopped ($order in its seeds): it comes up connected with that master ' +
    "down, another master's scope reads and writes through Redis, calls to the stopped master's scope fail at once, " +
    'and once it answers it is back and a set made meanwhile is written through',
  async ({ stoppedFirst }) => {
    const cluster = await startRedisCluster({ masters: 3 });
    await withoutFullCoverage(cluster);
    const { stopped, other, downScope, upScope } = await pickScopes(cluster);
    const stoppedNode = cluster.nodes[stopped]!;
    const address = `127.0.0.1:${stoppedNode.port}`;
    // An item in the healthy master's scope, written through Redis by a daemon that is gone before the test's starts.
    const writer = await startTierDaemon({ tier: cluster.urls, cluster: true, ...HEALTHY_TIER });
    await statusUntil(writer, (tier) => tier.state === 'connected', 'the writer connected');
    await writer.cache.withScope(upScope).set('shared', 'written before the master stopped');
    await writer.kill();

    process.kill(stoppedNode.pid, 'SIGSTOP');
    let continued = false;
    const resume = (): void => {
      if (!continued) process.kill(stoppedNode.pid, 'SIGCONT');
      continued = true;
    };
    onTestFinished(resume);

    const others = cluster.urls.filter((url) => url !== stoppedNode.url);
    const startedMs = performance.now();
    const daemon = await startTierDaemon({ tier: stoppedFirst ? [stoppedNode.url, ...others] : [...others, stoppedNode.url], cluster: true, timeoutMs: TIMEOUT_MS });
    const up = await statusUntil(
      daemon,
      (tier) => tier.state === 'connected' && (tier.downNodes ?? []).includes(address),
      'connected with the stopped master down',
      START_BOUND_MS,
    );
    const upMs = performance.now() - startedMs;
    expect(up.downNodes).toEqual([address]);

    // The healthy master's scope: a read is answered by Redis (no local copy here), a write reaches Redis.
    const before = await daemon.tierStatus();
    await using shared = await daemon.cache.withScope(upScope).get('shared');
    expect(await shared.item?.value()).toBe('written before the master stopped');
    expect((await daemon.tierStatus()).sharedHits).toBe(before.sharedHits + 1);
    await daemon.cache.withScope(upScope).set('written', 'written while the master was stopped');
    const [written] = await sharedValues(cluster.nodes[other]!.pipeline, [{ scope: [upScope], id: 'written' }]);
    expect(written).toContain('written while the master was stopped');

    // The stopped master's scope: each call fails at once (a miss; a set kept for later), far under the timeout.
    const fastMs: number[] = [];
    for (let n = 0; n < 3; n++) fastMs.push(await missMs(daemon, downScope, `missing-${n}`));
    const setStartedMs = performance.now();
    await daemon.cache.withScope(downScope).set('while-down', 'set while its master was stopped');
    fastMs.push(performance.now() - setStartedMs);
    expect(fastMs.filter((ms) => ms >= TIMEOUT_MS / 2), `calls to the stopped master's scope took ${fastMs.map(Math.round).join(', ')} ms`).toEqual([]);
    expect(await daemon.tierStatus()).toMatchObject({ state: 'connected', downNodes: [address] });

    // It answers again: the heartbeat finds it back, and the set made meanwhile is written through.
    resume();
    const back = await statusUntil(daemon, (tier) => tier.downNodes?.length === 0 && tier.pendingChanges === 0, 'the master is back and nothing waits');
    expect(back.state).toBe('connected');
    const [whileDown] = await sharedValues(stoppedNode.pipeline, [{ scope: [downScope], id: 'while-down' }]);
    expect(whileDown).toContain('set while its master was stopped');
    process.stderr.write(`tier-cluster-shard: started with a stopped master, connected with it down after ${Math.round(upMs)} ms\n`);
  },
);

test(
  'connections opened while a Cluster master is stopped, with it among their seeds (node-redis starts discovery at a ' +
    'seed picked at random): each comes up with that master down, commands to the others answered and to it refused at once',
  async () => {
    const cluster = await startRedisCluster({ masters: 3 });
    await withoutFullCoverage(cluster);
    const { stopped, other, downScope, upScope } = await pickScopes(cluster);
    const stoppedNode = cluster.nodes[stopped]!;
    const address = `127.0.0.1:${stoppedNode.port}`;
    process.kill(stoppedNode.pid, 'SIGSTOP');
    let continued = false;
    onTestFinished(() => {
      if (!continued) process.kill(stoppedNode.pid, 'SIGCONT');
    });
    // Eight connections, each with the stopped master and another as seeds: one at least starts discovery at the
    // stopped one but once in 256 runs.
    const log: string[] = [];
    const connections = Array.from(
      { length: 8 },
      () => new TierConnection({ urls: [stoppedNode.url, cluster.nodes[other]!.url], cluster: true, timeoutMs: TIMEOUT_MS, log: (line) => log.push(line) }),
    );
    onTestFinished(() => Promise.all(connections.map((connection) => connection.close())).then(() => {}));
    await Promise.all(connections.map((connection) => connection.open()));
    const deadline = performance.now() + START_BOUND_MS;
    while (!connections.every((connection) => connection.up && connection.figures().downNodes.includes(address))) {
      if (performance.now() > deadline) {
        throw new Error(`Not every connection came up with ${address} down: ${JSON.stringify(connections.map((connection) => connection.figures()))}; log: ${log.join(' | ')}`);
      }
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    const upKey = `{hoard:${upScope}}k`;
    const downKey = `{hoard:${downScope}}k`;
    for (const connection of connections) {
      expect(connection.figures().downNodes).toEqual([address]);
      expect(await connection.run('set', (client) => client.send(upKey, ['SET', upKey, 'v']))).toBe('OK');
      const startedMs = performance.now();
      await expect(connection.run('get', (client) => client.send(downKey, ['GET', downKey]))).rejects.toBeInstanceOf(NodeDown);
      expect(performance.now() - startedMs).toBeLessThan(TIMEOUT_MS / 2);
    }
  },
);

test('a connection opened while every master of a Cluster is stopped: its discovery fails at every seed, and it comes up once they answer', async () => {
  const cluster = await startRedisCluster({ masters: 3 });
  for (const node of cluster.nodes) process.kill(node.pid, 'SIGSTOP');
  let continued = false;
  onTestFinished(() => {
    if (!continued) for (const node of cluster.nodes) process.kill(node.pid, 'SIGCONT');
  });
  const log: string[] = [];
  const connection = new TierConnection({ urls: cluster.urls, cluster: true, timeoutMs: TIMEOUT_MS, log: (line) => log.push(line) });
  onTestFinished(() => connection.close());
  await connection.open();
  expect(connection.up).toBe(false);
  // Discovery times out at each seed in turn, and fails: the seeds answer only after that.
  const failed = (): boolean => /root nodes are unavailable/i.test(connection.figures().lastError ?? '');
  for (const deadline = performance.now() + START_BOUND_MS; !failed(); ) {
    if (performance.now() > deadline) throw new Error(`discovery did not fail: ${log.join(' | ')}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  for (const node of cluster.nodes) process.kill(node.pid, 'SIGCONT');
  continued = true;
  for (const deadline = performance.now() + START_BOUND_MS; !connection.up; ) {
    if (performance.now() > deadline) throw new Error(`not up again: ${JSON.stringify(connection.figures())}; log: ${log.join(' | ')}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  expect(connection.figures().downNodes).toEqual([]);
  expect(await connection.run('set', (client) => client.send('{k}', ['SET', '{k}', 'v']))).toBe('OK');
});

test('every master of a Cluster stopped, the tier degraded and its client made again: when all but one answer, it comes up with that one down, and then with none', async () => {
  const cluster = await startRedisCluster({ masters: 3 });
  await withoutFullCoverage(cluster);
  const { stopped, downScope, upScope } = await pickScopes(cluster);
  const address = `127.0.0.1:${cluster.nodes[stopped]!.port}`;
  const log: string[] = [];
  const connection = new TierConnection({ urls: cluster.urls, cluster: true, timeoutMs: TIMEOUT_MS, log: (line) => log.push(line) });
  onTestFinished(() => connection.close());
  await connection.open();
  const until = async (condition: () => boolean, what: string): Promise<void> => {
    for (const deadline = performance.now() + START_BOUND_MS; !condition(); ) {
      if (performance.now() > deadline) throw new Error(`Timed out waiting until ${what}: ${JSON.stringify(connection.figures())}; log: ${log.join(' | ')}`);
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
  };
  await until(() => connection.up, 'connected');
  const upKey = `{hoard:${upScope}}k`;
  const downKey = `{hoard:${downScope}}k`;

  const continued = new Set<number>();
  const resume = (n: number): void => {
    if (!continued.has(n)) process.kill(cluster.nodes[n]!.pid, 'SIGCONT');
    continued.add(n);
  };
  for (const node of cluster.nodes) process.kill(node.pid, 'SIGSTOP');
  onTestFinished(() => cluster.nodes.forEach((_, n) => resume(n)));
  // Commands to each master in turn until the tier is degraded (and its client made again).
  const keys = [upKey, downKey, ...cluster.nodes.map((_, n) => `{all-${n}}k`)];
  for (let n = 0; connection.up && n < 60; n++) {
    const key = keys[n % keys.length]!;
    await expect(connection.run('get', (client) => client.send(key, ['GET', key]))).rejects.toBeInstanceOf(TierUnavailable);
  }
  expect(connection.figures().state).toBe('degraded');

  for (const n of cluster.nodes.keys()) if (n !== stopped) resume(n);
  await until(() => connection.up && connection.figures().downNodes.includes(address), 'connected with one master down');
  expect(connection.figures().downNodes).toEqual([address]);
  expect(await connection.run('set', (client) => client.send(upKey, ['SET', upKey, 'v']))).toBe('OK');
  await expect(connection.run('get', (client) => client.send(downKey, ['GET', downKey]))).rejects.toBeInstanceOf(NodeDown);

  resume(stopped);
  await until(() => connection.figures().downNodes.length === 0, 'the last master back');
  expect(await connection.run('set', (client) => client.send(downKey, ['SET', downKey, 'v']))).toBe('OK');
});
