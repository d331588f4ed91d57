import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { expect, test } from 'vitest';
import type { TierStatus } from '../src/shared-tier.js';
import { type RedisCluster, startRedisCluster, startRedisServer } from './support/redis-server.js';
import { CLIENT_MODULE, type LineChild, startModule } from './support/processes.js';
import { HEALTHY_TIER, sharedValues, startTierDaemon, type TierDaemon } from './support/tier-daemon.js';
import { tempDir } from './support/temp-dir.js';

const DAEMONS = 4;
const CLIENTS_PER_DAEMON = 8;
const KEYS = 100;

/** One tier and its daemons: the test runs one Redis and one Redis Cluster side by side, each with its own daemons. */
interface Setup {
  name: string;
  daemons: TierDaemon[];
  keys: [scope: string, id: string][];
  pipeline(commands: readonly (readonly string[])[]): Promise<string[]>;
}

/**
 * A client process, given one daemon per setup: connects to each, says `ready`, waits for SIGUSR2 (so that all of them
 * start at once), then runs `getset` on every key of every setup in a random order, all at once. A client that computes
 * a value appends the setup and key to the log file before it sets it (an append of one short line is atomic, so no
 * computation can go uncounted, even one whose set failed). It prints what it got for every key, as one JSON line.
 */
const CLIENT = `
  import { appendFileSync } from 'node:fs';
  import { connect } from ${CLIENT_MODULE};
  const [logPath, name, setupsJson] = process.argv.slice(-3);
  const setups = await Promise.all(JSON.parse(setupsJson).map(async ({ setup, socketPath, keys }) =>
    ({ setup, keys, cache: await connect({ socketPath, autoStart: false, clientName: name }) })));
  const go = new Promise((resolve) => process.once('SIGUSR2', resolve));
  console.log('ready');
  await go;
  const got = {};
  const work = setups.flatMap(({ setup, keys, cache }) => keys.map(([scope, id]) => ({ setup, scope, id, cache })));
  await Promise.all(work.sort(() => Math.random() - 0.5).map(async ({ setup, scope, id, cache }) => {
    const key = setup + ' ' + scope + '/' + id;
    const gs = await cache.withScope(scope).getset(id);
    try {
      if (gs.item) got[key] = await gs.item.value();
      else {
        const value = key + ' computed by ' + name;
        appendFileSync(logPath, key + '\\n');
        await gs.set(value);
        got[key] = value;
      }
    } catch (error) {
      console.log('failed ' + key + ': ' + error.code + ' ' + error.message + ' at ' + new Date().toISOString());
      throw error;
    } finally {
      await gs.release();
    }
  }));
  await Promise.all(setups.map(({ cache }) => cache.close()));
  console.log(JSON.stringify(got));
`;

/**
 * Three scope names whose keys (hash tag `{hoard:<name>}`) fall on different masters of a three-master cluster, asked
 * of the cluster in one `redis-cli`.
 */
async function scopesOnEachMaster(cluster: RedisCluster): Promise<string[]> {
  const names = Array.from({ length: 30 }, (_, n) => `once-${n}`);
  const slots = await cluster.pipeline(names.map((name) => ['CLUSTER', 'KEYSLOT', `{hoard:${name}}`]));
  const owners = new Map<number, string>();
  for (const [n, reply] of slots.entries()) {
    const master = Math.floor((Number(/\d+/.exec(reply)![0]) * 3) / 16384);
    if (!owners.has(master)) owners.set(master, names[n]!);
  }
  if (owners.size !== 3) throw new Error(`${names.length} scope names fall on only ${owners.size} masters`);
  return [...owners.values()];
}

/** What a daemon logged, for a failure's report. */
function printLog(setup: string, daemon: TierDaemon): void {
  process.stderr.write(`${setup}: daemon ${daemon.pid} logged:\n${daemon.log.join('\n')}\n`);
}

test(
  `${DAEMONS} daemons x ${CLIENTS_PER_DAEMON} client processes getset ${KEYS} keys of a shared scope: each value is computed exactly once and every ` +
    'client gets it; on one Redis, and at the same time on a three-master Redis Cluster (keys in three scopes, one on each master)',
  async () => {
    // With 40 processes on a machine's few cores, the default timeout would turn this into a test of the fallback.
    const start = (tier: { tier: string | readonly string[]; cluster?: boolean }): Promise<TierDaemon[]> =>
      Promise.all(Array.from({ length: DAEMONS }, () => startTierDaemon({ ...tier, ...HEALTHY_TIER })));
    // Each tier's daemons start as soon as it is up: the one Redis's while the Cluster forms.
    const [[server, serverDaemons], [cluster, clusterDaemons, clusterScopes]] = await Promise.all([
      startRedisServer().then(async (server) => [server, await start({ tier: server.url })] as const),
      startRedisCluster().then(async (cluster) => {
        const [daemons, scopes] = await Promise.all([start({ tier: cluster.urls, cluster: true }), scopesOnEachMaster(cluster)]);
        return [cluster, daemons, scopes] as const;
      }),
    ]);
    const setups: Setup[] = [
      { name: 'one-redis', daemons: serverDaemons, keys: Array.from({ length: KEYS }, (_, k) => ['once', `key-${k}`]), pipeline: server.pipeline },
      {
        name: 'redis-cluster',
        daemons: clusterDaemons,
        keys: Array.from({ length: KEYS }, (_, k) => [clusterScopes[k % 3]!, `key-${k}`]),
        pipeline: cluster.pipeline,
      },
    ];

    const dir = await tempDir('hco-');
    const logPath = join(dir, 'computed.log');
    const clients: LineChild[] = [];
    for (let d = 0; d < DAEMONS; d++) {
      for (let c = 0; c < CLIENTS_PER_DAEMON; c++) {
        const mine = setups.map((setup) => ({ setup: setup.name, socketPath: setup.daemons[d]!.socketPath, keys: setup.keys }));
        clients.push(startModule(CLIENT, [logPath, `d${d}c${c}`, JSON.stringify(mine)]));
      }
    }
    await Promise.all(clients.map((client) => client.line((line) => line === 'ready')));
    for (const client of clients) client.child.kill('SIGUSR2');
    const codes = await Promise.all(clients.map((client) => client.exited));
    if (codes.some((code) => code !== 0)) {
      process.stderr.write(`${clients.flatMap((client) => client.lines.filter((line) => line.startsWith('failed'))).join('\n')}\n`);
      for (const setup of setups) for (const daemon of setup.daemons) printLog(setup.name, daemon);
    }
    expect(codes).toEqual(clients.map(() => 0));

    const computations = new Map<string, number>();
    for (const line of (await readFile(logPath, 'utf8')).split('\n').filter(Boolean)) computations.set(line, (computations.get(line) ?? 0) + 1);
    const values = new Map<string, Set<string>>();
    for (const client of clients) {
      for (const [key, value] of Object.entries(JSON.parse(client.lines.at(-1)!) as Record<string, string>)) {
        values.set(key, (values.get(key) ?? new Set()).add(value));
      }
    }

    for (const setup of setups) {
      const names = setup.keys.map(([scope, id]) => `${setup.name} ${scope}/${id}`);
      const counts = names.map((name) => computations.get(name) ?? 0);
      const statuses = await Promise.all(setup.daemons.map((daemon) => daemon.tierStatus()));
      const sum = (field: keyof TierStatus & ('leases' | 'errors' | 'localFallbacks' | 'fencedWrites')): number =>
        statuses.reduce((total, status) => total + status[field], 0);
      process.stderr.write(
        `compute once, ${setup.name}: ${counts.reduce((total, n) => total + n, 0)} computations of ${KEYS} keys (per key: min ${Math.min(...counts)}, ` +
          `max ${Math.max(...counts)}) by ${DAEMONS * CLIENTS_PER_DAEMON} clients of ${DAEMONS} daemons; leases ${sum('leases')}, ` +
          `errors ${sum('errors')}, local fallbacks ${sum('localFallbacks')}, fenced writes ${sum('fencedWrites')}; latency p99 ${statuses.map((status) => status.latencyP99Ms).join(', ')} ms\n`,
      );
      if (sum('errors') > 0) for (const daemon of setup.daemons) printLog(setup.name, daemon);
      expect(new Map(names.map((name) => [name, computations.get(name)]))).toEqual(new Map(names.map((name) => [name, 1])));
      expect(names.map((name) => [name, values.get(name)?.size])).toEqual(names.map((name) => [name, 1]));
      // What every daemon serves now, and what Redis holds: the one value the clients got.
      const expected = names.map((name) => [...values.get(name)!][0]);
      for (const daemon of setup.daemons) {
        const served = await Promise.all(
          setup.keys.map(async ([scope, id]) => {
            await using got = await daemon.cache.withScope(scope).get(id);
            return await got.item?.value();
          }),
        );
        expect(served).toEqual(expected);
      }
      const shared = await sharedValues(setup.pipeline, setup.keys.map(([scope, id]) => ({ scope: [scope], id })));
      expect(shared.map((value, k) => value?.includes(expected[k]!) === true)).toEqual(expected.map(() => true));
      expect(statuses.map((status) => [status.state, status.errors, status.localFallbacks, status.fencedWrites])).toEqual(
        statuses.map(() => ['connected', 0, 0, 0]),
      );
    }
    // On the Cluster, every master holds some of the items.
    for (const node of cluster.nodes) expect(Number(await node.cli('DBSIZE'))).toBeGreaterThan(0);
  },
);
