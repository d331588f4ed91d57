import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { expect, onTestFinished, test } from 'vitest';
import { connect } from '../client/index.js';
import { startDaemon } from '../daemon/index.js';
import { tierOptions } from '../daemon/tier-options.js';
import type { StatusResult } from '../src/wire/protocol.js';
import { cacheConformance } from './conformance/index.js';
import { redisServerForFile } from './support/redis-server.js';
import { tempDir } from './support/temp-dir.js';

/**
 * The whole conformance suite through RemoteCache against a daemon whose every scope is `shared` (`--share *=shared`)
 * on a real redis-server: reads that miss go through Redis, every write goes to both tiers, every getset miss takes a
 * lease. One server for the file; each test has a key prefix of its own, so no test sees another's keys.
 */

const redis = redisServerForFile();
let prefixes = 0;

/** A daemon in this process sharing every scope through the file's Redis, and a RemoteCache on it; closed at the end of the test. */
async function sharedDaemon(transport: 'binary' | 'json'): Promise<{ cache: Awaited<ReturnType<typeof connect<unknown>>>; logs: string[] }> {
  const dir = await tempDir('htc-');
  const logs: string[] = [];
  // Generous bounds, so that a busy machine's slow tier does not turn the suite into a test of the fallback.
  const tier = tierOptions({ tier: [redis.url], share: ['*=shared'], tierPrefix: `conf${process.pid}-${++prefixes}`, tierLease: '30s', tierTimeout: '10s' }, {})!;
  const daemon = await startDaemon({ socketPath: join(dir, 's.sock'), dataDir: join(dir, 'data'), idleTimeoutMs: 0, tier, log: (line) => logs.push(line) });
  onTestFinished(() => daemon.close());
  onTestFinished((context) => {
    // A failed test shows what the daemon logged (an internal error's stack is there).
    if (context.task.result?.state === 'fail') process.stderr.write(`daemon log:\n${logs.join('\n')}\n`);
  });
  const cache = await connect<unknown>({ socketPath: daemon.socketPath!, autoStart: false, transport });
  onTestFinished(() => cache.close());
  return { cache, logs };
}

for (const transport of ['binary', 'json'] as const) {
  cacheConformance(
    `RemoteCache on a daemon sharing every scope through Redis (${transport} transport)`,
    async () => {
      const { cache } = await sharedDaemon(transport);
      return {
        cache,
        close: () => cache.close(),
        settle: async () => void (await cache.status()),
        expirations: async () => ((await cache.status()) as StatusResult).expirations,
      };
    },
    { stores: true, values: 'json', countsExpirations: true },
  );
}

cacheConformance(
  'RemoteCache on a daemon sharing every scope through Redis, in a scope',
  async () => {
    const { cache } = await sharedDaemon('binary');
    return { cache: cache.withScope('outer'), close: () => cache.close(), settle: async () => void (await cache.status()) };
  },
  { stores: true, values: 'json' },
);

test('the suite above really went through Redis: writes, reads through and leases counted, no tier error', async () => {
  const { cache } = await sharedDaemon('binary');
  await cache.set('k', 'v');
  await cache.delete('k');
  await using gs = await cache.getset('k');
  await gs.set!('computed');
  await gs.release();
  await using missed = await cache.get('never written');
  expect(missed.item).toBeNull();
  const { tier } = (await cache.status()) as StatusResult;
  expect(tier).toMatchObject({ state: 'connected', sharing: { '*': 'shared' }, errors: 0, fencedWrites: 0, localFallbacks: 0 });
  expect(tier!.sharedWrites).toBeGreaterThanOrEqual(3);
  expect(tier!.leases).toBe(1);
  expect(tier!.sharedMisses).toBeGreaterThanOrEqual(1);
});

test("a value committed from a file in a shared scope is written through up to --tier-max-value; a larger one stays local behind a tombstone", async () => {
  const dir = await tempDir('htf-');
  const tierPrefix = `file${process.pid}-${++prefixes}`;
  const machines = await Promise.all(
    ['a', 'b'].map(async (name) => {
      const tier = tierOptions({ tier: [redis.url], share: ['*=shared'], tierPrefix, tierLease: '30s', tierTimeout: '10s', tierMaxValue: '60000' }, {})!;
      const daemon = await startDaemon({ socketPath: join(dir, `${name}.sock`), dataDir: join(dir, name), idleTimeoutMs: 0, tier, log: () => {} });
      onTestFinished(() => daemon.close());
      const cache = await connect<Uint8Array>({ socketPath: daemon.socketPath!, autoStart: false, codec: 'binary' });
      onTestFinished(() => cache.close());
      return cache;
    }),
  );
  const [a, b] = machines as [Awaited<ReturnType<typeof connect<Uint8Array>>>, Awaited<ReturnType<typeof connect<Uint8Array>>>];
  const commit = async (id: string, bytes: Buffer, how: 'set' | 'getset'): Promise<void> => {
    await using file = await a.reserveFile();
    await writeFile(file.path, bytes);
    if (how === 'set') return await a.setFile(id, file.path);
    await using gs = await a.getset(id);
    await gs.setFile(file.path);
  };
  const valueOn = async (cache: typeof a, id: string): Promise<Buffer | null> => {
    await using got = await cache.get(id);
    return got.item && Buffer.from(await got.item.value());
  };
  for (const [how, size] of [['set', 100], ['set', 50_000], ['getset', 40_000]] as const) {
    const bytes = Buffer.alloc(size, size & 0xff);
    await commit(`${how}${size}`, bytes, how);
    expect((await valueOn(b, `${how}${size}`))?.equals(bytes), `${how} of ${size} bytes read on the other machine`).toBe(true);
  }
  // Over the tier's limit: the other machine misses (the tombstone) and this one keeps it.
  await a.set('large', Buffer.from('an older, small value'));
  const large = Buffer.alloc(70_000, 9);
  await commit('large', large, 'set');
  expect(await valueOn(b, 'large')).toBeNull();
  expect((await valueOn(a, 'large'))?.equals(large)).toBe(true);
  const { tier } = (await a.status()) as StatusResult;
  expect(tier).toMatchObject({ errors: 0, fencedWrites: 0 });
});
