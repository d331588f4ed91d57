import { expect, test } from 'vitest';
import type { Cache } from '../src/cache.js';
import { readOnlyRules, type RedisServer, startRedisServer } from './support/redis-server.js';
import { HEALTHY_TIER, sharedItem, startTierDaemon } from './support/tier-daemon.js';

async function valueOf(cache: Cache<unknown>, id: string): Promise<unknown> {
  await using got = await cache.get(id);
  return got.item === null ? undefined : await got.item.value();
}

/** Calls per command since the server started (`INFO commandstats`), e.g. `{ hgetall: 12, evalsha: 3 }`. */
async function commandCalls(server: RedisServer): Promise<Map<string, number>> {
  const calls = new Map<string, number>();
  for (const match of (await server.cli('INFO', 'commandstats')).matchAll(/^cmdstat_([^:]+):calls=(\d+)/gm)) calls.set(match[1]!, Number(match[2]));
  return calls;
}

/** What changes data or others' view of it without Redis flagging it `write`: scripts and functions (which may write), PUBLISH. */
const NOT_FLAGGED = /^(eval|evalsha|fcall|publish|spublish)$/;

/** The commands called since `before` that write: flagged `write` by Redis (`COMMAND INFO`), or {@link NOT_FLAGGED}. */
async function writesSince(server: RedisServer, before: Map<string, number>): Promise<string[]> {
  const writes: string[] = [];
  for (const [name, calls] of await commandCalls(server)) {
    const since = calls - (before.get(name) ?? 0);
    if (since === 0) continue;
    // commandstats names a subcommand `parent|sub`, as COMMAND INFO takes it.
    if (NOT_FLAGGED.test(name) || /^write$/m.test(await server.cli('COMMAND', 'INFO', name))) writes.push(`${name} x${since}`);
  }
  return writes;
}

/** Sets, deletes, clears and getsets in `cache`, all of which must succeed (on the local tier at least). */
async function writeEverything(cache: Cache<unknown>): Promise<void> {
  await cache.set('written', 'locally');
  await cache.set('doomed', 'soon gone');
  await cache.delete('doomed');
  const gs = await cache.getset('computed');
  await gs.set('computed locally');
  await gs.release();
  await cache.withScope('nested').set('inner', 'x');
  await cache.withScope('nested').clear();
  expect(await valueOf(cache, 'written')).toBe('locally');
  expect(await valueOf(cache, 'computed')).toBe('computed locally');
  expect(await valueOf(cache, 'doomed')).toBe(undefined);
}

test('a shared-read daemon reads through the tier and never writes to Redis', async () => {
  const server = await startRedisServer();
  const writer = await startTierDaemon({ tier: server.url, ...HEALTHY_TIER });
  await writer.cache.withScope('ci').set('published', 'by a trusted writer');
  await writer.cache.withScope('ci').set('written', 'by a trusted writer');
  // From before it starts: a shared-read daemon writes nothing, not even at start.
  const before = await commandCalls(server);
  const reader = await startTierDaemon({ tier: server.url, share: ['*=shared-read'], ...HEALTHY_TIER });

  // Its first read of a scope is served (not kept); later ones are kept: read twice.
  expect(await valueOf(reader.cache.withScope('ci'), 'published')).toBe('by a trusted writer');
  expect(await valueOf(reader.cache.withScope('ci'), 'published')).toBe('by a trusted writer');
  await writeEverything(reader.cache.withScope('ci'));
  await writeEverything(reader.cache);

  expect(await writesSince(server, before)).toEqual([]);
  expect((await sharedItem(server.cli, { scope: ['ci'], id: 'written' }))?.v).toContain('by a trusted writer');
  expect(await sharedItem(server.cli, { scope: ['ci'], id: 'computed' })).toBe(undefined);
  const status = await reader.tierStatus();
  expect(status).toMatchObject({ state: 'connected', sharedWrites: 0, errors: 0, refused: 0, sharing: { '*': 'shared-read' } });
  expect(status.sharedHits).toBeGreaterThan(0);
  // The trusted writer still serves its own value.
  expect(await valueOf(writer.cache.withScope('ci'), 'written')).toBe('by a trusted writer');
});

test("a shared daemon whose Redis user may only read: Redis refuses its writes, status counts them as refused, its clients' local writes succeed", async () => {
  const server = await startRedisServer({ users: [{ name: 'runner', password: 'runner secret', rules: readOnlyRules() }] });
  const writer = await startTierDaemon({ tier: server.url, ...HEALTHY_TIER });
  await writer.cache.withScope('ci').set('written', 'by a trusted writer');
  const readOnly = await startTierDaemon({ tier: server.url, username: 'runner', password: 'runner secret', ...HEALTHY_TIER });
  expect(readOnly.child.spawnargs.join(' ')).not.toContain('runner secret');

  expect(await valueOf(readOnly.cache.withScope('ci'), 'written')).toBe('by a trusted writer');
  await writeEverything(readOnly.cache.withScope('ci'));

  const status = await readOnly.tierStatus();
  expect(status.refused).toBeGreaterThan(0);
  expect(status.errors).toBeGreaterThanOrEqual(status.refused);
  expect(status.sharedHits).toBeGreaterThan(0);
  // Redis says who it refused.
  const refusedBy = await server.cli('ACL', 'LOG');
  expect(refusedBy).toContain('runner');
  expect((await sharedItem(server.cli, { scope: ['ci'], id: 'written' }))?.v).toContain('by a trusted writer');
  expect(await sharedItem(server.cli, { scope: ['ci'], id: 'computed' })).toBe(undefined);
  process.stderr.write(`permissions: a read-only Redis user's daemon: ${status.refused} commands refused (${status.errors} errors), its clients' writes all succeeded locally\n`);
});
