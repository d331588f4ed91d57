import { describe, expect, onTestFinished, test } from 'vitest';
import { HOUSEKEEPING_BATCH } from '../src/housekeeper.js';
import { LevelCache, type LevelCacheTestOptions } from '../src/level-cache.js';
import { eventually, ManualClock } from './conformance/support.js';
import { tempDir } from './support/temp-dir.js';

const LIMIT = 100_000;
const BUCKET_MS = 1000;
const VALUE = 'x'.repeat(1000);

/** A LevelCache with a small limit, short recency buckets, a clock the test moves and no timed sweep. */
async function open(options: LevelCacheTestOptions & { dir?: string; clock?: ManualClock } = {}) {
  const clock = options.clock ?? new ManualClock();
  const dir = options.dir ?? (await tempDir());
  const cache = await LevelCache.open<string>(dir, {
    maxSizeBytes: LIMIT,
    recencyBucketMs: BUCKET_MS,
    sweepIntervalMs: 1e9,
    now: clock.now,
    ...options,
  } as LevelCacheTestOptions);
  onTestFinished(() => cache.close());
  return { cache, clock, dir };
}

const ids = (prefix: string, count: number): string[] => Array.from({ length: count }, (_, n) => `${prefix}-${String(n).padStart(4, '0')}`);

async function present(cache: LevelCache<string>, id: string): Promise<boolean> {
  await using got = await cache.get(id);
  return got.item !== null;
}

/** The counted bytes of one item of this test's shape. */
async function itemBytes(): Promise<number> {
  const { cache } = await open({ maxSizeBytes: Infinity });
  await cache.set('a-0000', VALUE);
  return cache.usage().sizeBytes;
}

describe('eviction (LevelCache, small maxSizeBytes)', () => {
  test('filling past the limit keeps the counted size within the limit plus one batch, and ends below it', async () => {
    const size = await itemBytes();
    const { cache } = await open();
    let most = 0;
    const written = ids('a', 400);
    for (const id of written) {
      await cache.set(id, VALUE);
      most = Math.max(most, cache.usage().sizeBytes);
    }
    expect(most).toBeGreaterThan(LIMIT);
    expect(most).toBeLessThanOrEqual(LIMIT + HOUSEKEEPING_BATCH * size);
    await eventually(() => cache.usage().sizeBytes <= LIMIT * 0.9, 'the eviction down to 90% of the limit');
    const usage = cache.usage();
    expect(usage.evictions).toBe(written.length - usage.items);
    // Everything was written in one bucket: the least recent are the first in key order, and the last written stay.
    for (const id of written.slice(-50)) expect(await present(cache, id), id).toBe(true);
    for (const id of written.slice(0, 50)) expect(await present(cache, id), id).toBe(false);
  });

  test('a cache opened above a lower limit than before evicts at once, with no write and no timed sweep', async () => {
    const dir = await tempDir();
    {
      const { cache } = await open({ dir, maxSizeBytes: Infinity });
      for (const id of ids('a', 200)) await cache.set(id, VALUE);
      expect(cache.usage().sizeBytes).toBeGreaterThan(LIMIT);
      await cache.close();
    }
    const { cache } = await open({ dir });
    await eventually(() => cache.usage().sizeBytes <= LIMIT * 0.9, 'the eviction at open');
    expect(cache.usage().evictions).toBeGreaterThan(100);
  });

  test('the least recently read go first, and the recently read stay', async () => {
    const size = await itemBytes();
    const { cache, clock } = await open();
    const older = ids('a', 30);
    const old = ids('b', 30);
    for (const id of older) await cache.set(id, VALUE);
    clock.advance(BUCKET_MS);
    for (const id of old) await cache.set(id, VALUE);
    clock.advance(BUCKET_MS);
    // Reads are recorded in the background; eviction counts those not yet written.
    for (const id of older) expect(await present(cache, id)).toBe(true);
    clock.advance(BUCKET_MS);
    const fresh = ids('c', Math.ceil(LIMIT / size) - 60 + 2);
    for (const id of fresh) await cache.set(id, VALUE);
    await eventually(() => cache.usage().evictions > 0 && cache.usage().sizeBytes <= LIMIT * 0.9, 'the eviction');
    for (const id of [...older, ...fresh]) expect(await present(cache, id), id).toBe(true);
    const gone: string[] = [];
    for (const id of old) if (!(await present(cache, id))) gone.push(id);
    expect(gone.length).toBe(cache.usage().evictions);
    expect(gone).toEqual(old.slice(0, gone.length));
  });

  test('items whose lock is held (get, getset) or waited for are never evicted, even the oldest', async () => {
    const size = await itemBytes();
    const { cache, clock } = await open();
    for (const id of ['held-get', 'held-getset', 'waited-for']) await cache.set(id, VALUE);
    clock.advance(BUCKET_MS);
    const reader = await cache.get('held-get');
    const computing = await cache.getset('held-getset');
    const holder = await cache.get('waited-for');
    const writer = cache.set('waited-for', 'new value');
    const others = ids('z', Math.ceil((LIMIT * 1.5) / size));
    for (const id of others) await cache.set(id, VALUE);
    await eventually(() => cache.usage().sizeBytes <= LIMIT * 0.9, 'the eviction');
    // The next oldest went: the locked ones were skipped, not waited for.
    expect(await present(cache, others[0]!)).toBe(false);
    await reader.release();
    await computing.release();
    await holder.release();
    await writer;
    for (const id of ['held-get', 'held-getset', 'waited-for']) expect(await present(cache, id), id).toBe(true);
  });

  test('an eviction that ended above the limit, every item locked, starts again once writes add a hundredth of the limit', async () => {
    const size = await itemBytes();
    const { cache } = await open();
    // Every item written through a getset handle that stays held: nothing can be evicted.
    const handles = [];
    for (const id of ids('a', Math.ceil((LIMIT * 1.2) / size))) {
      const handle = await cache.getset(id);
      await handle.set(VALUE);
      handles.push(handle);
    }
    // gc runs after the pass the writes started, which found every item locked.
    expect(await cache.gc()).toMatchObject({ evictedItems: 0 });
    expect(cache.usage().sizeBytes).toBeGreaterThan(LIMIT);
    for (const handle of handles) await handle.release();
    // No timed sweep (its interval is 1e9 ms): only writes can start the next eviction.
    for (const id of ids('b', Math.ceil(LIMIT / 100 / size) + 1)) await cache.set(id, VALUE);
    await eventually(() => cache.usage().sizeBytes <= LIMIT * 0.9, 'the eviction started by the writes');
  });

  test('expired items are removed before any live item', async () => {
    const size = await itemBytes();
    const { cache, clock } = await open();
    // 75% live and 20% expiring: below the limit until the expiring ones expire.
    const live = ids('a', Math.floor((LIMIT * 0.75) / size));
    for (const id of live) await cache.set(id, VALUE);
    clock.advance(BUCKET_MS);
    const expiring = ids('e', Math.ceil((LIMIT * 0.2) / size));
    for (const id of expiring) await cache.set(id, VALUE, { ttlMs: 1000 });
    clock.advance(BUCKET_MS * 2);
    // One more live write passes the limit: the expired items (the most recently written) go, and nothing else.
    expect(cache.usage().sizeBytes).toBeLessThanOrEqual(LIMIT);
    const extra = ids('f', Math.ceil((LIMIT - cache.usage().sizeBytes) / size) + 1);
    for (const id of extra) await cache.set(id, VALUE);
    await eventually(() => cache.usage().expirations === expiring.length, 'the expired items removed');
    await eventually(() => cache.usage().sizeBytes <= LIMIT * 0.9 || cache.usage().evictions > 0, 'the pass ended');
    expect(cache.usage().evictions).toBe(0);
    for (const id of [...live, ...extra]) expect(await present(cache, id), id).toBe(true);
  });

  test('reads are answered while a large eviction runs', async () => {
    const dir = await tempDir();
    const clock = new ManualClock();
    {
      const { cache } = await open({ dir, clock, maxSizeBytes: Infinity });
      const all = ids('a', 5000);
      for (let start = 0; start < all.length; start += 500) await Promise.all(all.slice(start, start + 500).map((id) => cache.set(id, 'v')));
      await cache.close();
    }
    const { cache } = await open({ dir, clock, maxSizeBytes: LIMIT / 10 });
    const before = cache.usage();
    expect(before.sizeBytes).toBeGreaterThan(LIMIT);
    // One write starts the eviction of most of the 5,000 items, batch by batch.
    await cache.set('kick', 'v');
    let readsDuringEviction = 0;
    let reads = 0;
    while (cache.usage().sizeBytes > (LIMIT / 10) * 0.9) {
      // Each read comes in a turn of its own, as a request from a socket would.
      await new Promise((resolve) => setImmediate(resolve));
      await cache.get(`a-${String(reads % 5000).padStart(4, '0')}`).then((got) => got.release());
      reads++;
      const { evictions } = cache.usage();
      if (evictions > 0 && evictions < before.items - 1000) readsDuringEviction++;
      if (reads > 1_000_000) throw new Error('eviction never finished');
    }
    expect(readsDuringEviction).toBeGreaterThan(0);
    expect(cache.usage().evictions).toBeGreaterThan(HOUSEKEEPING_BATCH * 4);
  });

  test('gc with dryRun removes nothing and reports what gc then removes', async () => {
    const dir = await tempDir();
    const clock = new ManualClock();
    const live = ids('a', 150);
    const expiring = ids('e', 10);
    {
      const { cache } = await open({ dir, clock, maxSizeBytes: Infinity });
      for (const id of live) await cache.set(id, VALUE);
      for (const id of expiring) await cache.set(id, VALUE, { ttlMs: 1000 });
      await cache.close();
    }
    clock.advance(BUCKET_MS * 2);
    // Reopened under a limit it is within, but past the 90% that gc evicts down to: nothing is removed until gc.
    const limit = 170_000;
    const { cache } = await open({ dir, clock, maxSizeBytes: limit });
    const before = cache.usage();
    expect(before.items).toBe(160);
    expect(before.sizeBytes).toBeLessThanOrEqual(limit);
    expect(before.sizeBytes).toBeGreaterThan(limit * 0.9);
    const dry = await cache.gc({ dryRun: true });
    expect(cache.usage()).toEqual(before);
    expect((await cache.list({ limit: 1000 })).items.length).toBe(150);
    expect(dry.expiredItems).toBe(10);
    expect(dry.evictedItems).toBeGreaterThan(0);
    expect(dry.sizeBytes).toBeLessThanOrEqual(limit * 0.9);
    const done = await cache.gc();
    expect(done.expiredItems).toBe(dry.expiredItems);
    expect(done.evictedItems).toBe(dry.evictedItems);
    expect(done.sizeBytes).toBe(cache.usage().sizeBytes);
    expect(cache.usage().items).toBe(160 - done.expiredItems - done.evictedItems);
    expect(cache.usage()).toMatchObject({ evictions: done.evictedItems, expirations: done.expiredItems });
    // A second pass has nothing left to do.
    expect(await cache.gc()).toMatchObject({ evictedItems: 0, expiredItems: 0 });
  });

  test('the timed sweep removes expired items nobody reads', async () => {
    const { cache, clock } = await open({ maxSizeBytes: Infinity, sweepIntervalMs: 20 });
    await cache.set('expiring', VALUE, { ttlMs: 1000 });
    await cache.set('kept', VALUE);
    clock.advance(2000);
    await eventually(() => cache.usage().expirations === 1, 'the sweep');
    expect(cache.usage().items).toBe(1);
    expect(await present(cache, 'kept')).toBe(true);
  });
});
