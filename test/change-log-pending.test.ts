import { expect, onTestFinished, test } from 'vitest';
import { RedisTier } from '../daemon/redis-tier.js';
import { tierOptions } from '../daemon/tier-options.js';
import { LevelStore } from '../src/level/level-store.js';
import { LocalBackend } from '../src/local-backend.js';
import { scopeOf } from '../src/scope-path.js';
import type { EncodedValue } from '../src/store.js';
import { eventually } from './conformance/support.js';
import { redisServerForFile, startTcpProxy } from './support/redis-server.js';
import { tempDir } from './support/temp-dir.js';

/**
 * The change log against this daemon's own changes that wait to be written through, with LocalBackend and RedisTier
 * in this process (each on a LevelStore of its own, standing in for machines) on a real redis-server: the order of
 * the concurrent steps is set by who holds an item's lock, and read from the lock table, never from sleeps.
 */

const keep = { encode: (value: EncodedValue) => value, decode: (value: EncodedValue) => value };
const text = (value: string): EncodedValue => ({ encoding: 'json', bytes: Buffer.from(JSON.stringify(value)) });
const textOf = (value: EncodedValue | undefined): string | undefined => (value === undefined ? undefined : (JSON.parse(Buffer.from(value.bytes).toString()) as string));
const PAGES = scopeOf(['pages']);
const at = { modified: 1_700_000_000 };

const redis = redisServerForFile();
let prefixes = 0;

interface Machine {
  backend: LocalBackend<EncodedValue, EncodedValue>;
  store: LevelStore;
  tier: RedisTier;
}

/** One machine: a LevelStore in a fresh directory and a RedisTier on `url` (generous bounds for a busy machine). */
async function machine(prefix: string, url: string): Promise<Machine> {
  const dataDir = await tempDir('hclp-');
  const store = await LevelStore.open(dataDir, { maxSizeBytes: Infinity });
  const settings = tierOptions({ tier: [url], share: ['pages=shared'], tierPrefix: prefix, tierLease: '30s', tierTimeout: '10s' }, {})!;
  const tier = new RedisTier({ ...settings, dataDir, log: () => {} });
  const backend = new LocalBackend<EncodedValue, EncodedValue>(store, keep, { tier });
  onTestFinished(() => backend.close());
  await backend.openTier();
  return { backend, store, tier };
}

async function valueOn(machine: Machine, id: string): Promise<string | undefined> {
  const got = (await machine.backend.get(PAGES, id, {}))!;
  try {
    return got.item === null ? undefined : textOf(await got.item.value());
  } finally {
    await got.release();
  }
}

test("another machine's change heard while a local write of the item waits for its lock, and that write then waits to be written through: the local write is kept, written through, and wins", async () => {
  const prefix = `clp${process.pid}-${++prefixes}`;
  const proxy = await startTcpProxy({ port: redis.port! });
  const [a, b] = await Promise.all([machine(prefix, proxy.url), machine(prefix, redis.url)]);
  // A follows the scope's change log: B's change of an item A holds reaches A as an invalidation.
  await b.backend.set(PAGES, 'warm', text('warm by B'), at);
  await eventually(async () => (await valueOn(a, 'warm')) === 'warm by B' && a.store.read(PAGES, 'warm') !== undefined, 'A keeps a copy of what it reads');
  await b.backend.set(PAGES, 'warm', text('warm again by B'), at);
  await eventually(() => a.store.read(PAGES, 'warm') === undefined, "A applies B's change");

  // A reader holds the item: A's own set waits for it, and then the invalidation of B's change, behind the set.
  const reader = (await a.backend.get(PAGES, 'x', {}))!;
  const setting = a.backend.set(PAGES, 'x', text('x by A'), at);
  await eventually(() => a.backend.lockStats().waiting === 1, "A's set waits for the reader");
  await b.backend.set(PAGES, 'x', text('x by B'), at);
  await eventually(() => a.backend.lockStats().waiting === 2, "the invalidation of B's change waits behind A's set");
  expect(a.backend.lockSnapshot().filter((lock) => lock.state === 'waiting').map((lock) => lock.owner?.name ?? null)).toEqual([null, 'hoard tier']);

  // Redis can no longer take A's set: it waits to be written through, and wins there once written (it is the later).
  proxy.cut('reset');
  await reader.release();
  await setting;
  await eventually(() => a.backend.lockStats().waiting === 0 && a.backend.lockStats().held === 0, 'the invalidation ran');
  expect(a.tier.status().pendingChanges).toBe(1);
  // Before the fix, the invalidation, checked before A's set became pending, dropped it: then written through as a delete.
  expect(textOf(a.store.read(PAGES, 'x')?.value)).toBe('x by A');

  proxy.restore();
  await eventually(async () => a.tier.status().pendingChanges === 0 && (await valueOn(b, 'x')) === 'x by A', "A's set reaches B");
  expect(await valueOn(a, 'x')).toBe('x by A');
});
