import { Level } from 'level';
import { describe, expect, onTestFinished, test } from 'vitest';
import { LevelCache, type LevelCacheTestOptions } from '../src/level-cache.js';
import { LevelStore, type LevelStoreOptions, verifyDirectory } from '../src/level/level-store.js';
import { indexKey, RECENCY_PREFIX } from '../src/level/records.js';
import { ROOT_SCOPE, scopeOf } from '../src/scope-path.js';
import type { EncodedRecord } from '../src/store.js';
import { eventually, ManualClock } from './conformance/support.js';
import { tempDir } from './support/temp-dir.js';

const value = (bytes: number, expiry: { expiresAtMs?: number; staleUntilMs?: number } = {}): EncodedRecord => ({
  modified: 1_700_000_000,
  value: { encoding: 'binary', bytes: new Uint8Array(bytes).fill(1) },
  ...expiry,
});

const START_MS = 1_800_000_000_000;

async function openStore(dir: string, options: LevelStoreOptions = {}): Promise<LevelStore> {
  const store = await LevelStore.open(dir, { maxSizeBytes: Infinity, ...options });
  onTestFinished(() => store.close().catch(() => {}));
  return store;
}

/** Changes the database of a closed store directly, as damage on disk would. */
async function edit(dir: string, change: (db: Level<Buffer, Buffer>) => Promise<void>): Promise<void> {
  const db = new Level<Buffer, Buffer>(dir, { keyEncoding: 'buffer', valueEncoding: 'buffer' });
  try {
    await change(db);
  } finally {
    await db.close();
  }
}

async function indexEntries(dir: string, prefix: string): Promise<string[]> {
  const keys: string[] = [];
  await edit(dir, async (db) => {
    for await (const key of db.keys({ gte: Buffer.from(prefix), lt: Buffer.from(String.fromCharCode(prefix.charCodeAt(0) + 1)) })) keys.push(key.toString('utf8', 7));
  });
  return keys;
}

const ids = (prefix: string, count: number): string[] => Array.from({ length: count }, (_, n) => `${prefix}-${String(n).padStart(4, '0')}`);

/** A directory of `count` items a-0000… of 100 bytes, written at START_MS, expiring a second later. */
async function expiringItems(count: number): Promise<string> {
  const dir = await tempDir();
  const store = await openStore(dir, { now: () => START_MS });
  for (const id of ids('a', count)) await store.write(ROOT_SCOPE, id, value(100, { expiresAtMs: START_MS + 1000 }));
  await store.close();
  return dir;
}

describe('LevelStore figures and damaged entries', () => {
  test('totals gives the counted bytes and the limit, as usage does', async () => {
    const dir = await tempDir();
    const store = await openStore(dir, { maxSizeBytes: 1_000_000 });
    for (let n = 0; n < 20; n++) await store.write(scopeOf([`s${n}`]), 'k', value(100));
    await store.write(ROOT_SCOPE, 'root', value(10));
    const usage = store.usage();
    expect(store.totals()).toEqual({ bytes: usage.bytes, limitBytes: 1_000_000 });
    await store.delete(scopeOf(['s3']), 'k');
    expect(store.totals().bytes).toBe(store.usage().bytes);
    expect(store.totals().bytes).toBe(usage.bytes - usage.scopes.get('s3')!.bytes);
    const unlimited = await openStore(await tempDir());
    expect(unlimited.totals()).toEqual({ bytes: 0, limitBytes: null });
  });

  test('deleting an item whose meta entry is damaged takes its size from its record: no drift', async () => {
    const dir = await tempDir();
    const time = { ms: START_MS };
    {
      const store = await openStore(dir, { now: () => time.ms });
      for (const id of ids('a', 10)) await store.write(ROOT_SCOPE, id, value(100, { expiresAtMs: START_MS + 1000 }));
      await store.close();
    }
    await edit(dir, (db) => db.put(Buffer.from('t:a-0003'), Buffer.from([1, 2, 3])));
    const store = await openStore(dir, { now: () => time.ms });
    const before = store.usage();
    await store.delete(ROOT_SCOPE, 'a-0003');
    expect(store.usage().items).toBe(before.items - 1);
    const report = await store.verify({ fix: false });
    expect(report.driftedScopes).toEqual([]);
    expect(report.kept).toEqual(report.counted);
    expect(report.counted.items).toBe(9);
    await store.close();
    // Its expiry entry went with it (its recency entry cannot be found without its meta: leastRecent drops it).
    expect(await indexEntries(dir, 'x')).not.toContain(':a-0003');
  });

  test('leastRecent and expired skip stray index entries, list an item with damaged meta by its record, and remove the strays', async () => {
    const dir = await expiringItems(10);
    await edit(dir, async (db) => {
      await db.put(indexKey('r', 0, ':gone-1'), Buffer.alloc(0));
      await db.put(indexKey('r', 0, ':gone-2'), Buffer.alloc(0));
      await db.put(indexKey('r', START_MS - 60_000, ':a-0005'), Buffer.alloc(0));
      await db.put(indexKey('x', 5, ':gone-3'), Buffer.alloc(0));
      await db.put(indexKey('x', START_MS, ':a-0006'), Buffer.alloc(0));
      await db.put(Buffer.from('t:a-0000'), Buffer.from([1, 2, 3]));
    });
    const store = await openStore(dir, { now: () => START_MS });
    const first = await store.leastRecent({ limit: 3 });
    expect(first.keys).toEqual([':a-0000', ':a-0001', ':a-0002']);
    const rest = await store.leastRecent({ cursor: first.next!, limit: 10 });
    expect(rest).toEqual({ keys: ids(':a', 10).slice(3), next: null });
    expect(await store.expired(START_MS + 1000, 20)).toEqual(ids(':a', 10));
    // The strays' removal goes through the write queue: a write queued after it is written after it.
    await store.write(ROOT_SCOPE, 'later', value(1));
    await store.close();
    expect((await indexEntries(dir, 'r')).filter((key) => !key.startsWith(':a-') || key === ':a-0000')).toEqual([':a-0000', ':later']);
    expect((await indexEntries(dir, 'r')).filter((key) => key === ':a-0005')).toHaveLength(1);
    expect(await indexEntries(dir, 'x')).toEqual(ids(':a', 10));
    // Left for verify to mend: the damaged meta entry, and a-0000's two index entries that it does not match.
    expect(await verifyDirectory(dir, { fix: false })).toMatchObject({ driftedScopes: [], strayEntries: 3 });
  });

  test('eviction with a damaged meta entry at the head of the recency index ends at its target, and gc settles', async () => {
    const dir = await tempDir();
    {
      const cache = await LevelCache.open<string>(dir, { maxSizeBytes: Infinity });
      for (const id of ids('a', 200)) await cache.set(id, 'x'.repeat(1000));
      await cache.close();
    }
    await edit(dir, (db) => db.put(Buffer.from('t:a-0000'), Buffer.from([1, 2, 3])));
    const cache = await LevelCache.open<string>(dir, { maxSizeBytes: 100_000, sweepIntervalMs: 1e9 } as LevelCacheTestOptions);
    onTestFinished(() => cache.close());
    await eventually(() => cache.usage().sizeBytes <= 90_000, 'the eviction down to 90% of the limit');
    await cache.gc();
    const evictions = cache.usage().evictions;
    expect(cache.usage().sizeBytes).toBeLessThanOrEqual(90_000);
    expect(evictions).toBeLessThan(200);
    const report = await cache.verify({ fix: false });
    expect(report.driftedScopes).toEqual([]);
    expect(report.kept).toEqual(report.counted);
  });

  test('items whose meta entry is damaged are still evicted and swept, and no drift is left', async () => {
    const clock = new ManualClock();
    const dir = await tempDir();
    const VALUE = 'x'.repeat(1000);
    {
      const cache = await LevelCache.open<string>(dir, { maxSizeBytes: Infinity, now: clock.now } as LevelCacheTestOptions);
      await cache.set('a-0000', VALUE, { ttlMs: 1 });
      for (const id of ids('a', 100).slice(1)) await cache.set(id, VALUE);
      await cache.close();
    }
    // a-0000: expired, a-0001: the least recently used; both with a damaged meta entry.
    await edit(dir, async (db) => {
      await db.put(Buffer.from('t:a-0000'), Buffer.from([1, 2, 3]));
      await db.put(Buffer.from('t:a-0001'), Buffer.from([1, 2, 3]));
    });
    clock.advance(1000);
    const cache = await LevelCache.open<string>(dir, { maxSizeBytes: 100_000, sweepIntervalMs: 1e9, now: clock.now } as LevelCacheTestOptions);
    for (let n = 0; n < 300; n++) await cache.set(`b-${n}`, VALUE);
    await cache.gc();
    await cache.gc();
    const report = await cache.verify({ fix: false });
    expect(report.driftedScopes).toEqual([]);
    expect(report.kept).toEqual(report.counted);
    expect(cache.usage().sizeBytes).toBeLessThanOrEqual(100_000);
    await cache.close();
    const store = await openStore(dir, { memoryCacheBytes: 0 });
    // Before: both survived 300 writes and two gc() (their index entries were dropped as strays), a-0002 did not.
    expect(store.read(ROOT_SCOPE, 'a-0000')).toBeUndefined();
    expect(store.read(ROOT_SCOPE, 'a-0001')).toBeUndefined();
    expect(store.read(ROOT_SCOPE, 'a-0002')).toBeUndefined();
  });

  test('leastRecent and expired list items whose meta entry is damaged or missing, and the store logs them once', async () => {
    const dir = await expiringItems(4);
    await edit(dir, async (db) => {
      await db.put(Buffer.from('t:a-0001'), Buffer.from([1, 2, 3]));
      await db.del(Buffer.from('t:a-0002'));
    });
    const lines: string[] = [];
    const store = await openStore(dir, { now: () => START_MS, log: (line) => lines.push(line) });
    for (let round = 0; round < 2; round++) {
      expect((await store.leastRecent({ limit: 10 })).keys).toEqual(ids(':a', 4));
      expect(await store.expired(START_MS + 1000, 10)).toEqual(ids(':a', 4));
    }
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/damaged or missing meta.*hoard verify/);
    // Their index entries stay until the items go (the removal of strays is queued before this write).
    await store.write(ROOT_SCOPE, 'later', value(1));
    await store.close();
    expect(await indexEntries(dir, 'x')).toEqual(ids(':a', 4));
  });

  test('the removal of 10,000 stray index entries is written in chunks, with turns of the event loop between them', async () => {
    const dir = await tempDir();
    {
      const store = await openStore(dir);
      for (const id of ids('a', 5)) await store.write(ROOT_SCOPE, id, value(10));
      await store.close();
    }
    await edit(dir, (db) =>
      db.batch(Array.from({ length: 10_000 }, (_, n) => ({ type: 'put' as const, key: indexKey(RECENCY_PREFIX, 0, `:gone-${n}`), value: Buffer.alloc(0) }))),
    );
    const store = await openStore(dir);
    expect((await store.leastRecent({ limit: 1000 })).keys).toEqual(ids(':a', 5));
    // The removal is queued; a write queued now is written before its second chunk is even queued (a turn later), so
    // verify's snapshot, taken at once, sees some strays removed and some not. One batch for them all: all or none.
    await store.write(ROOT_SCOPE, 'marker', value(1));
    const { strayEntries } = await store.verify({ fix: false });
    expect(strayEntries).toBeGreaterThan(0);
    expect(strayEntries).toBeLessThan(10_000);
    expect(strayEntries % 1000).toBe(0);
  });

  test('verify reports a damaged counter entry as drift and rewrites it; open logs it', async () => {
    const dir = await tempDir();
    {
      const store = await openStore(dir);
      for (const id of ids('a', 5)) await store.write(scopeOf(['p']), id, value(100));
      await store.write(scopeOf(['q']), 'one', value(100));
      await store.close();
    }
    await edit(dir, (db) => db.put(Buffer.from('cp'), Buffer.from([1, 2, 3])));
    const lines: string[] = [];
    const store = await openStore(dir, { log: (line) => lines.push(line) });
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/counter/);
    expect(store.usage().scopes.get('p')).toBeUndefined();
    await store.close();
    const found = await verifyDirectory(dir, { fix: false });
    expect(found).toMatchObject({ driftedScopes: ['p'], fixed: false });
    expect(found.counted.items).toBe(6);
    const fixed = await verifyDirectory(dir, { fix: true });
    expect(fixed).toMatchObject({ driftedScopes: ['p'], fixed: true });
    const after = await verifyDirectory(dir, { fix: false });
    expect(after).toMatchObject({ driftedScopes: [], strayEntries: 0 });
    expect(after.kept).toEqual(after.counted);
    const reopened = await openStore(dir, { log: (line) => lines.push(line) });
    expect(lines).toHaveLength(1);
    expect(reopened.usage().scopes.get('p')).toEqual({ bytes: after.counted.bytes - reopened.usage().scopes.get('q')!.bytes, items: 5 });
  });

  test('touches still pending count for eviction: recently read items outlive older unread ones', async () => {
    const clock = new ManualClock();
    const dir = await tempDir();
    const cache = await LevelCache.open<string>(dir, {
      maxSizeBytes: 100_000,
      recencyBucketMs: 1000,
      sweepIntervalMs: 1e9,
      now: clock.now,
    } as LevelCacheTestOptions);
    onTestFinished(() => cache.close());
    const VALUE = 'x'.repeat(1000);
    for (const id of ids('a', 30)) await cache.set(id, VALUE);
    clock.advance(1000);
    for (const id of ids('b', 30)) await cache.set(id, VALUE);
    clock.advance(1000);
    for (const id of ids('a', 30)) {
      await using got = await cache.get(id);
      expect(got.item).not.toBeNull();
    }
    clock.advance(1000);
    for (const id of ids('c', 40)) await cache.set(id, VALUE);
    await eventually(() => cache.usage().evictions > 0 && cache.usage().sizeBytes <= 90_000, 'the eviction');
    const gone = async (prefix: string): Promise<string[]> => {
      const out: string[] = [];
      for (const id of ids(prefix, 30)) {
        await using got = await cache.get(id);
        if (got.item === null) out.push(id);
      }
      return out;
    };
    expect(await gone('a')).toEqual([]);
    expect((await gone('b')).length).toBe(cache.usage().evictions);
  });

  test('a flush of 10,000 touches is written in chunks, with turns of the event loop between them', async () => {
    const dir = await tempDir();
    const time = { ms: START_MS };
    const store = await openStore(dir, { now: () => time.ms, memoryCacheBytes: 0 });
    const keys = ids('k', 10_000);
    await Promise.all(keys.map((id) => store.write(ROOT_SCOPE, id, value(1))));
    time.ms += 60_000;
    // The 10,000th read starts the flush; the first item's touch is in its first chunk, the last's in its last.
    for (const id of keys) store.read(ROOT_SCOPE, id);
    const touched = async (id: string, after?: string): Promise<boolean> => {
      const page = await store.list(ROOT_SCOPE, { cursor: after === undefined ? undefined : Buffer.from(`:${after}`).toString('base64url'), limit: 1 });
      expect(page.items[0]!.id).toBe(id);
      return page.items[0]!.accessedAtMs! > START_MS;
    };
    let between = false;
    for (;;) {
      const first = await touched(keys[0]!);
      const last = await touched(keys.at(-1)!, keys.at(-2));
      if (first && !last) between = true;
      if (last) break;
    }
    // One batch for them all would show the first and the last touched together.
    expect(between).toBe(true);
  });
});

describe('eviction behind stray index entries', () => {
  test('25,000 stray recency entries before every item: the eviction pages past them down to its target', async () => {
    const dir = await tempDir();
    {
      const cache = await LevelCache.open<string>(dir, { maxSizeBytes: Infinity });
      for (const id of ids('a', 200)) await cache.set(id, 'x'.repeat(1000));
      await cache.close();
    }
    // More strays than the store looks past in one listing (10,000), all older than any item.
    await edit(dir, (db) =>
      db.batch(Array.from({ length: 25_000 }, (_, n) => ({ type: 'put' as const, key: indexKey(RECENCY_PREFIX, 0, `:gone-${n}`), value: Buffer.alloc(0) }))),
    );
    const cache = await LevelCache.open<string>(dir, { maxSizeBytes: 100_000, sweepIntervalMs: 1e9 } as LevelCacheTestOptions);
    onTestFinished(() => cache.close());
    // The eviction at open, with no write and no timed sweep. Before: it ended at the first page of strays, over the limit.
    await eventually(() => cache.usage().sizeBytes <= 90_000, 'the eviction past the strays');
    expect(cache.usage().evictions).toBeGreaterThan(100);
  });
});
