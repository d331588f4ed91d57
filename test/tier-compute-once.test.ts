import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, test } from 'vitest';
import { type RedisServer, startRedisCluster, startRedisServer } from './support/redis-server.js';
import { CLIENT_MODULE, type LineChild, startModule } from './support/processes.js';
import type { TierStatus } from '../src/shared-tier.js';
import { sharedItem, startTierDaemon, type TierDaemon } from './support/tier-daemon.js';
import { tempDir } from './support/temp-dir.js';

const DAEMONS = 4;
const CLIENTS_PER_DAEMON = 8;
const KEYS = 100;

/**
 * A client process: connects, says `ready`, waits for SIGUSR2 (so that all of them start at once), then runs `getset`
 * on every key in a random order, all at once. A client that computes a value appends the key to the log file before
 * it sets it (an append of one short line is atomic, so no computation can go uncounted, even one whose set failed).
 * It prints what it got for every key, computed or read, as one JSON line.
 */
const CLIENT = `
  import { appendFileSync } from 'node:fs';
  import { connect } from ${CLIENT_MODULE};
  const [socketPath, logPath, name, keysJson] = process.argv.slice(-4);
  const keys = JSON.parse(keysJson);
  const cache = await connect({ socketPath, autoStart: false, clientName: name });
  const go = new Promise((resolve) => process.once('SIGUSR2', resolve));
  console.log('ready');
  await go;
  const got = {};
  await Promise.all(keys.sort(() => Math.random() - 0.5).map(async ([scope, id]) => {
    const gs = await cache.withScope(scope).getset(id);
    try {
      if (gs.item) got[scope + '/' + id] = await gs.item.value();
      else {
        const value = scope + '/' + id + ' computed by ' + name;
        appendFileSync(logPath, scope + '/' + id + '\\n');
        await gs.set(value);
        got[scope + '/' + id] = value;
      }
    } finally {
      await gs.release();
    }
  }));
  await cache.close();
  console.log(JSON.stringify(got));
`;

interface Run {
  daemons: TierDaemon[];
  /** Computations per key, from the log file. */
  computations: Map<string, number>;
  /** Every value some client got, per key. */
  values: Map<string, Set<string>>;
}

async function computeOnce(options: { tier: string | readonly string[]; cluster?: boolean; keys: [string, string][] }): Promise<Run> {
  const dir = await tempDir('hco-');
  const logPath = join(dir, 'computed.log');
  const daemons = await Promise.all(Array.from({ length: DAEMONS }, () => startTierDaemon({ tier: options.tier, cluster: options.cluster })));
  const clients: LineChild[] = daemons.flatMap((daemon, d) =>
    Array.from({ length: CLIENTS_PER_DAEMON }, (_, c) =>
      startModule(CLIENT, [daemon.socketPath, logPath, `d${d}c${c}`, JSON.stringify(options.keys)]),
    ),
  );
  await Promise.all(clients.map((client) => client.line((line) => line === 'ready')));
  for (const client of clients) client.child.kill('SIGUSR2');
  expect(await Promise.all(clients.map((client) => client.exited))).toEqual(clients.map(() => 0));

  const computations = new Map<string, number>();
  for (const line of (await readFile(logPath, 'utf8')).split('\n').filter(Boolean)) computations.set(line, (computations.get(line) ?? 0) + 1);
  const values = new Map<string, Set<string>>();
  for (const client of clients) {
    for (const [key, value] of Object.entries(JSON.parse(client.lines.at(-1)!) as Record<string, string>)) {
      values.set(key, (values.get(key) ?? new Set()).add(value));
    }
  }
  return { daemons, computations, values };
}

/** What every daemon serves now, and what Redis holds, for each key: all the one value the clients got. */
async function expectOneValueEverywhere(run: Run, keys: [string, string][], cli: RedisServer['cli']): Promise<void> {
  for (const [scope, id] of keys) {
    const [value] = [...run.values.get(`${scope}/${id}`)!];
    for (const daemon of run.daemons) {
      await using got = await daemon.cache.withScope(scope).get(id);
      expect({ key: `${scope}/${id}`, value: await got.item?.value() }).toEqual({ key: `${scope}/${id}`, value });
    }
    expect((await sharedItem(cli, { scope: [scope], id }))?.v).toContain(value);
  }
}

/** Prints the figures: computations per key, and the daemons' tier counters. */
async function report(what: string, run: Run): Promise<TierStatus[]> {
  const counts = [...run.computations.values()];
  const statuses = await Promise.all(run.daemons.map((daemon) => daemon.tierStatus()));
  const sum = (field: 'leases' | 'sharedHits' | 'errors' | 'localFallbacks' | 'fencedWrites'): number => statuses.reduce((total, status) => total + status[field], 0);
  process.stderr.write(
    `compute once, ${what}: ${counts.reduce((total, n) => total + n, 0)} computations of ${run.computations.size} keys (at most ${Math.max(...counts)} per key) ` +
      `by ${DAEMONS * CLIENTS_PER_DAEMON} clients of ${DAEMONS} daemons; leases ${sum('leases')}, shared hits ${sum('sharedHits')}, ` +
      `errors ${sum('errors')}, local fallbacks ${sum('localFallbacks')}, fenced writes ${sum('fencedWrites')}\n`,
  );
  return statuses;
}

describe('compute once across machines', () => {
  test(`${DAEMONS} daemons x ${CLIENTS_PER_DAEMON} client processes getset ${KEYS} keys of a shared scope: each value is computed exactly once, every client gets it`, async () => {
    const server = await startRedisServer();
    const keys = Array.from({ length: KEYS }, (_, k): [string, string] => ['once', `key-${k}`]);
    const run = await computeOnce({ tier: server.url, keys });
    const statuses = await report('one Redis', run);
    expect(run.computations).toEqual(new Map(keys.map(([scope, id]) => [`${scope}/${id}`, 1])));
    expect([...run.values.values()].map((set) => set.size)).toEqual(keys.map(() => 1));
    await expectOneValueEverywhere(run, keys, server.cli);
    expect(statuses.map((status) => status.state)).toEqual(run.daemons.map(() => 'connected'));
    expect(statuses.reduce((sum, status) => sum + status.errors + status.localFallbacks + status.fencedWrites, 0)).toBe(0);
  });

  test(`the same on a three-master Redis Cluster, with the keys in three top-level scopes, one on each master`, async () => {
    const cluster = await startRedisCluster();
    // A scope's keys share the hash tag {hoard:<name>}: pick names whose slots fall on different masters.
    const owners = new Map<number, string>();
    for (let n = 0; owners.size < 3; n++) {
      const slot = Number(await cluster.cli('CLUSTER', 'KEYSLOT', `{hoard:once-${n}}`));
      const master = Math.floor((slot * 3) / 16384);
      if (!owners.has(master)) owners.set(master, `once-${n}`);
    }
    const scopes = [...owners.values()];
    const keys = Array.from({ length: KEYS }, (_, k): [string, string] => [scopes[k % 3]!, `key-${k}`]);
    const run = await computeOnce({ tier: cluster.urls, cluster: true, keys });
    const statuses = await report('Redis Cluster', run);
    expect(run.computations).toEqual(new Map(keys.map(([scope, id]) => [`${scope}/${id}`, 1])));
    expect([...run.values.values()].map((set) => set.size)).toEqual(keys.map(() => 1));
    await expectOneValueEverywhere(run, keys, cluster.cli);
    expect(statuses.reduce((sum, status) => sum + status.errors + status.localFallbacks + status.fencedWrites, 0)).toBe(0);
    // Every master holds some of the items.
    for (const node of cluster.nodes) expect(Number(await node.cli('DBSIZE'))).toBeGreaterThan(0);
  });
});
