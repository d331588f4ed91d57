import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { expect, test } from 'vitest';
import type { Cache } from '../src/cache.js';
import { PROJECT_ROOT } from './support/child.js';
import { type RedisUser, startRedisCluster, startRedisServer } from './support/redis-server.js';
import { HEALTHY_TIER, startTierDaemon, type TierDaemon } from './support/tier-daemon.js';

/**
 * README's `ACL SETUSER` lines for the shared tier ("ACLs for runners that only read"), as written there, on real
 * Redis servers: a writer daemon and a reader daemon logged in as those users run every kind of operation, and Redis
 * refuses none of their commands (nothing in `ACL LOG`, no tier error), so that the lines stay true as the tier's
 * commands change.
 */

/** The README's line for `user`, as the rules after the user's name, the password left out. */
async function readmeRules(user: string): Promise<string[]> {
  const readme = await readFile(join(PROJECT_ROOT, 'README.md'), 'utf8');
  const lines = [...readme.matchAll(new RegExp(`^ACL SETUSER ${user} (.*)$`, 'gm'))].map(([, rules]) => rules!);
  expect(lines, `README has one ACL SETUSER line for ${user}`).toHaveLength(1);
  // `on` and the password (`>…`) come from the test, as RedisUser wants them apart.
  return lines[0]!.split(/\s+/).filter((word) => word !== 'on' && !word.startsWith('>'));
}

async function valueOf(cache: Cache<unknown>, id: string): Promise<unknown> {
  await using got = await cache.get(id);
  return got.item === null ? undefined : await got.item.value();
}

/** Every kind of call a writer makes in a shared scope: plain and expiring sets, a large value, getsets, deletes, clears. */
async function write(writer: TierDaemon): Promise<void> {
  const pages = writer.cache.withScope('pages');
  await pages.set('a', 'A');
  await pages.set('b', 'B', { ttlMs: 60_000, staleMs: 60_000 });
  await pages.set('big', 'x'.repeat(4096));
  await writer.cache.set('root item', 'R');
  {
    await using computed = await pages.getset('c');
    if (!computed.item) await computed.set('C');
  }
  await pages.withScope('nested').set('n', 'N');
  await pages.withScope('nested').clear();
  await pages.delete('b');
  expect(await valueOf(pages, 'a')).toBe('A');
}

/** Every kind of call a `shared-read` runner makes: reads through Redis, a getset that reads through, local writes. */
async function read(reader: TierDaemon): Promise<void> {
  const pages = reader.cache.withScope('pages');
  expect(await valueOf(pages, 'a')).toBe('A');
  expect(await valueOf(pages, 'c')).toBe('C');
  expect(await valueOf(pages, 'missing')).toBe(undefined);
  {
    await using computed = await reader.cache.getset('root item');
    expect(await computed.item?.value()).toBe('R');
  }
  await pages.set('local', 'L');
  await pages.clear();
}

async function checkUsers(setup: { url: string | readonly string[]; cluster: boolean; aclLogs(): Promise<string[]> }): Promise<void> {
  const tier = { tier: setup.url, cluster: setup.cluster, ...HEALTHY_TIER, maxValueBytes: 1024 };
  const writer = await startTierDaemon({ ...tier, share: ['*=shared'], username: 'hoard-writer', password: 'writer secret' });
  const reader = await startTierDaemon({ ...tier, share: ['*=shared-read'], username: 'hoard-reader', password: 'reader secret' });
  await write(writer);
  await read(reader);
  // A change the reader hears, and a root clear of every scope the writer shares.
  await writer.cache.withScope('pages').set('a', 'A2');
  await writer.cache.clear();
  const statuses = { writer: await writer.tierStatus(), reader: await reader.tierStatus() };
  expect(statuses.writer).toMatchObject({ state: 'connected', errors: 0, refused: 0, localFallbacks: 0 });
  expect(statuses.writer.sharedWrites).toBeGreaterThan(0);
  expect(statuses.reader).toMatchObject({ state: 'connected', errors: 0, refused: 0, sharedWrites: 0 });
  expect(statuses.reader.sharedHits).toBeGreaterThanOrEqual(3);
  expect(await setup.aclLogs()).toEqual([]);
}

async function users(): Promise<RedisUser[]> {
  return [
    { name: 'hoard-writer', password: 'writer secret', rules: await readmeRules('hoard-writer') },
    { name: 'hoard-reader', password: 'reader secret', rules: await readmeRules('hoard-reader') },
  ];
}

test("README's ACL lines for writers and read-only runners: every operation of both daemons runs on one Redis, none refused", async () => {
  const server = await startRedisServer({ unixSocket: true, users: await users() });
  await checkUsers({ url: server.url, cluster: false, aclLogs: async () => [await server.cli('ACL', 'LOG')].filter(Boolean) });
});

test("README's ACL lines on a three-master Redis Cluster: none refused on any master", async () => {
  const cluster = await startRedisCluster({ users: await users() });
  await checkUsers({
    url: cluster.urls,
    cluster: true,
    aclLogs: async () => (await Promise.all(cluster.nodes.map((node) => node.cli('ACL', 'LOG')))).filter(Boolean),
  });
});
