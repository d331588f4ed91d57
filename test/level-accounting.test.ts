import { execFileSync } from 'node:child_process';
import { mkdir, readdir, stat, statfs, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Level } from 'level';
import { describe, expect, onTestFinished, test } from 'vitest';
import { BLOB_MIN_BYTES } from '../src/level/blob-files.js';
import { LevelStore, type LevelStoreOptions, MAX_DEFAULT_SIZE_BYTES, verifyDirectory } from '../src/level/level-store.js';
import { encodeBlobRecord, encodeRecord } from '../src/level/records.js';
import { itemKey, parseItemKey, ROOT_SCOPE, type Scope, scopeOf } from '../src/scope-path.js';
import type { EncodedRecord, StoreListedItem } from '../src/store.js';
import { tempDir } from './support/temp-dir.js';

const value = (bytes: number, fill = 1, expiry: { expiresAtMs?: number; staleUntilMs?: number } = {}): EncodedRecord => ({
  modified: 1_700_000_000,
  value: { encoding: 'binary', bytes: new Uint8Array(bytes).fill(fill) },
  ...expiry,
});

/** A clock the test moves. */
function clock(startMs = 1_800_000_000_000): { now: () => number; set(ms: number): void } {
  let ms = startMs;
  return { now: () => ms, set: (to) => (ms = to) };
}

async function openStore(dir: string, options: LevelStoreOptions = {}): Promise<LevelStore> {
  const store = await LevelStore.open(dir, { maxSizeBytes: Infinity, ...options });
  onTestFinished(() => store.close().catch(() => {}));
  return store;
}

/**
 * What the directory holds, counted without the store: every record's key and value in LevelDB, and the length of
 * every file in `blobs/`, by top-level scope name.
 */
async function recount(dir: string): Promise<{ bytes: number; items: number; scopes: Map<string, { bytes: number; items: number }> }> {
  const db = new Level<Buffer, Buffer>(dir, { keyEncoding: 'buffer', valueEncoding: 'buffer' });
  const scopes = new Map<string, { bytes: number; items: number }>();
  let bytes = 0;
  let items = 0;
  try {
    for await (const [key, raw] of db.iterator({ gte: Buffer.from('i'), lt: Buffer.from('j') })) {
      const { scope } = parseItemKey(key.toString('utf8', 1));
      const name = scope.path[0] ?? '';
      const counter = scopes.get(name) ?? { bytes: 0, items: 0 };
      counter.bytes += key.length + raw.length;
      counter.items++;
      scopes.set(name, counter);
      bytes += key.length + raw.length;
      items++;
    }
    for await (const [key, name] of db.iterator({ gte: Buffer.from('b'), lt: Buffer.from('c') })) {
      const size = (await stat(join(dir, 'blobs', name.toString('latin1')))).size;
      const scopeName = parseItemKey(key.toString('utf8', 1)).scope.path[0] ?? '';
      scopes.get(scopeName)!.bytes += size;
      bytes += size;
    }
  } finally {
    await db.close();
  }
  return { bytes, items, scopes };
}

function plain(usage: { bytes: number; items: number; scopes: ReadonlyMap<string, { bytes: number; items: number }> }): object {
  return { bytes: usage.bytes, items: usage.items, scopes: Object.fromEntries([...usage.scopes].map(([name, { bytes, items }]) => [name, { bytes, items }])) };
}

async function listAll(store: LevelStore, scope: Scope, limit: number): Promise<{ items: StoreListedItem[]; scopes: string[]; pages: number }> {
  const items: StoreListedItem[] = [];
  const scopes: string[] = [];
  let cursor: string | undefined;
  let pages = 0;
  do {
    const page = await store.list(scope, { cursor, limit });
    expect(page.items.length + page.scopes.length).toBeLessThanOrEqual(limit);
    items.push(...page.items);
    scopes.push(...page.scopes);
    cursor = page.cursor ?? undefined;
    pages++;
  } while (cursor !== undefined);
  return { items, scopes, pages };
}

describe('LevelStore sizes', () => {
  test('the counts are exact after puts, replacements, deletes, clears, large values and records that expire, and survive a restart', async () => {
    const dir = await tempDir();
    const store = await openStore(dir, { memoryCacheBytes: 0 });
    const a = scopeOf(['a']);
    const ab = scopeOf(['a', 'b']);
    const odd = scopeOf(['we/ird:%']);
    expect(plain(store.usage())).toEqual({ bytes: 0, items: 0, scopes: {} });
    await store.write(ROOT_SCOPE, 'top', value(10));
    await store.write(a, 'x', value(100));
    await store.write(a, 'x', value(200, 2)); // replaced: counted once, at its new size
    await store.write(ab, 'big', value(BLOB_MIN_BYTES + 5));
    await store.write(ab, 'big', value(BLOB_MIN_BYTES * 2, 3, { expiresAtMs: 5, staleUntilMs: 9 }));
    await store.write(ab, 'ttl', value(50, 4, { expiresAtMs: 7 }));
    await store.write(odd, 'y', value(3));
    await Promise.all(Array.from({ length: 50 }, (_, n) => store.write(scopeOf(['c', `${n % 3}`]), `k${n}`, value(n))));
    await store.delete(a, 'x');
    await store.delete(a, 'never-there');
    await store.clear(scopeOf(['c', '1']));
    // Each record: 1 + key bytes + header (10) + 'binary' (6) [+ 16 when it expires] + the value, or + 4 + the file's name.
    expect(store.usage().scopes.get('a')).toEqual({ bytes: (1 + 'a/:ttl'.length + 2 + 10 + 6 + 16 + 50) + (1 + 'a/b/:big'.length + 10 + 6 + 16 + 4 + '00/0123456789ab-1'.length + BLOB_MIN_BYTES * 2), items: 2 });
    expect(store.usage().scopes.get('')).toEqual({ bytes: 1 + ':top'.length + 10 + 6 + 10, items: 1 });
    const expected = await (async () => {
      await store.close();
      return recount(dir);
    })();
    expect(expected.items).toBe(1 + 2 + 1 + 50 - 17);
    const reopened = await openStore(dir);
    expect(plain(reopened.usage())).toEqual(plain(expected));
    expect(reopened.usage().scopes.has('we/ird:%')).toBe(true);
    expect(await reopened.scopeUsage(a)).toEqual(expected.scopes.get('a'));
    expect(await reopened.scopeUsage(ab)).toEqual(expected.scopes.get('a'));
    expect(await reopened.scopeUsage(scopeOf(['c', '2']))).toEqual({ bytes: expect.any(Number), items: 16 });
    expect(await reopened.scopeUsage(ROOT_SCOPE)).toEqual({ bytes: expected.bytes, items: expected.items });
    await reopened.clear(ROOT_SCOPE);
    expect(plain(reopened.usage())).toEqual({ bytes: 0, items: 0, scopes: {} });
    expect((await reopened.verify({ fix: false })).strayEntries).toBe(0);
  });

  test('a value whose size alone exceeds the limit is refused with CACHE_OVER_SIZE_LIMIT before anything is written', async () => {
    const dir = await tempDir();
    const store = await openStore(dir, { maxSizeBytes: BLOB_MIN_BYTES + 1000, memoryCacheBytes: 0 });
    expect(store.usage().limitBytes).toBe(BLOB_MIN_BYTES + 1000);
    await store.write(ROOT_SCOPE, 'k', value(10, 1));
    await expect(store.write(ROOT_SCOPE, 'k', value(BLOB_MIN_BYTES + 1000, 2))).rejects.toMatchObject({ name: 'CacheError', code: 'CACHE_OVER_SIZE_LIMIT' });
    expect(store.read(ROOT_SCOPE, 'k')!.value.bytes).toEqual(Buffer.from(new Uint8Array(10).fill(1)));
    expect(await readdir(join(dir, 'blobs')).catch(() => [])).toEqual([]);
    // The limit counts the whole item: key, header and file.
    await store.write(ROOT_SCOPE, 'fits', value(BLOB_MIN_BYTES + 900));
    await expect(store.write(ROOT_SCOPE, 'k', value(1001 + BLOB_MIN_BYTES - 40))).rejects.toMatchObject({ code: 'CACHE_OVER_SIZE_LIMIT' });
    expect(store.usage().items).toBe(2);
    for (const maxSizeBytes of [0, -1, NaN, '1' as unknown as number]) {
      await expect(LevelStore.open(await tempDir(), { maxSizeBytes })).rejects.toThrow(TypeError);
    }
    const unlimited = await openStore(await tempDir(), { maxSizeBytes: Infinity });
    expect(unlimited.usage().limitBytes).toBeNull();
    const byDefault = await openStore(await tempDir(), { maxSizeBytes: undefined });
    expect(byDefault.usage().limitBytes).toBeGreaterThan(0);
    expect(byDefault.usage().limitBytes).toBeLessThanOrEqual(10 * 1024 ** 3);
  });
});

describe('LevelStore recency and expiry', () => {
  test('least recently used first across buckets, with touches written in the background and kept over a restart', async () => {
    const dir = await tempDir();
    const time = clock();
    const options = { now: time.now, recencyBucketMs: 60_000 };
    const store = await openStore(dir, options);
    for (const id of ['a', 'b', 'c', 'd']) await store.write(ROOT_SCOPE, id, value(5));
    time.set(time.now() + 60_000);
    await store.write(ROOT_SCOPE, 'e', value(5));
    expect(store.read(ROOT_SCOPE, 'b')).toBeDefined();
    expect(store.read(ROOT_SCOPE, 'b')).toBeDefined();
    time.set(time.now() + 120_000);
    expect(store.read(ROOT_SCOPE, 'a')).toBeDefined();
    expect(store.read(ROOT_SCOPE, 'missing')).toBeUndefined();
    // Not written yet (one batch a second at most), but leastRecent writes them first.
    expect((await store.leastRecent({ limit: 10 })).keys).toEqual([':c', ':d', ':b', ':e', ':a']);
    await store.close();
    const reopened = await openStore(dir, options);
    expect((await reopened.leastRecent({ limit: 10 })).keys).toEqual([':c', ':d', ':b', ':e', ':a']);
    const first = await reopened.leastRecent({ limit: 2 });
    expect(first.keys).toEqual([':c', ':d']);
    const second = await reopened.leastRecent({ cursor: first.next!, limit: 2 });
    expect(second.keys).toEqual([':b', ':e']);
    expect(await reopened.leastRecent({ cursor: second.next!, limit: 2 })).toEqual({ keys: [':a'], next: null });
    await expect(reopened.leastRecent({ cursor: 'garbage!', limit: 2 })).rejects.toThrow(TypeError);
    // An item deleted before its touch is written is not brought back by it.
    time.set(time.now() + 60_000);
    expect(reopened.read(ROOT_SCOPE, 'c')).toBeDefined();
    await reopened.delete(ROOT_SCOPE, 'c');
    await reopened.close();
    const last = await openStore(dir, options);
    expect((await last.leastRecent({ limit: 10 })).keys).toEqual([':d', ':b', ':e', ':a']);
    expect((await last.verify({ fix: false })).strayEntries).toBe(0);
  });

  test('touches are written within about a second while the store stays open', async () => {
    const dir = await tempDir();
    const time = clock();
    const store = await openStore(dir, { now: time.now });
    await store.write(ROOT_SCOPE, 'old', value(5));
    await store.write(ROOT_SCOPE, 'new', value(5));
    time.set(time.now() + 60_000);
    store.read(ROOT_SCOPE, 'old');
    await expect.poll(async () => (await store.leastRecent({ limit: 10 })).keys, { timeout: 30_000 }).toEqual([':new', ':old']);
  });

  test('with the default clock, a hit in the memory layer in a later bucket is still recorded', async () => {
    const dir = await tempDir();
    const store = await openStore(dir, { recencyBucketMs: 20 });
    await store.write(ROOT_SCOPE, 'a', value(5));
    await store.write(ROOT_SCOPE, 'b', value(5));
    expect(store.memoryCache().bytes).toBeGreaterThan(0);
    // Reads of 'a' (hits) go on until one falls in a bucket after 'b' was written and its touch is written.
    await expect
      .poll(async () => {
        expect(store.read(ROOT_SCOPE, 'a')).toBeDefined();
        return (await store.leastRecent({ limit: 10 })).keys;
      }, { timeout: 30_000, interval: 25 })
      .toEqual([':b', ':a']);
  });

  test('expired gives the items whose stale time has passed, earliest first, and records that expire read back with their times', async () => {
    const dir = await tempDir();
    const store = await openStore(dir);
    const s = scopeOf(['s']);
    await store.write(s, 'late', value(5, 1, { expiresAtMs: 3000 }));
    await store.write(s, 'early', value(5, 1, { expiresAtMs: 500, staleUntilMs: 1000 }));
    await store.write(s, 'middle', value(BLOB_MIN_BYTES, 1, { expiresAtMs: 2000 }));
    await store.write(s, 'never', value(5));
    expect(await store.expired(999, 10)).toEqual([]);
    expect(await store.expired(2000, 10)).toEqual(['s/:early', 's/:middle']);
    expect(await store.expired(10_000, 2)).toEqual(['s/:early', 's/:middle']);
    await store.write(s, 'early', value(5, 1, { expiresAtMs: 9000 }));
    expect(await store.expired(10_000, 10)).toEqual(['s/:middle', 's/:late', 's/:early']);
    await store.close();
    const reopened = await openStore(dir, { memoryCacheBytes: 0 });
    expect(reopened.read(s, 'early')).toMatchObject({ expiresAtMs: 9000, staleUntilMs: 9000 });
    expect(reopened.read(s, 'middle')).toMatchObject({ expiresAtMs: 2000, staleUntilMs: 2000, value: { bytes: Buffer.from(new Uint8Array(BLOB_MIN_BYTES).fill(1)) } });
    expect(reopened.read(s, 'never')).not.toHaveProperty('expiresAtMs');
    await reopened.write(s, 'early', value(5));
    expect(await reopened.expired(10_000, 10)).toEqual(['s/:middle', 's/:late']);
  });
});

describe('LevelStore listing', () => {
  test('10,000 items in pages while another writer adds and deletes: no duplicates, nothing missed that was there throughout', async () => {
    const dir = await tempDir();
    const store = await openStore(dir);
    const scope = scopeOf(['big']);
    const ids = Array.from({ length: 10_000 }, (_, n) => `item-${n.toString().padStart(5, '0')}`);
    for (let at = 0; at < ids.length; at += 1000) await Promise.all(ids.slice(at, at + 1000).map((id) => store.write(scope, id, value(20))));
    let writing = true;
    let churned = 0;
    const writer = (async () => {
      while (writing) {
        const id = `item-${(churned * 7919) % 10_000}-new`;
        await store.write(scope, id, value(20));
        await store.delete(scope, `item-${(churned * 104_729) % 10_000}-new`);
        churned++;
      }
    })();
    const { items, pages } = await listAll(store, scope, 700);
    writing = false;
    await writer;
    const listed = items.map((item) => item.id);
    expect(new Set(listed).size).toBe(listed.length);
    expect(listed.filter((id) => !id.endsWith('-new'))).toEqual(ids);
    expect(pages).toBeGreaterThanOrEqual(15);
    expect(churned).toBeGreaterThan(0);
    expect(items[0]).toEqual({ id: 'item-00000', sizeBytes: 1 + 'big/:item-00000'.length + 10 + 6 + 20, modified: 1_700_000_000, accessedAtMs: expect.any(Number) });
  });

  test('sub-scope names once each, from their items, with their subtrees skipped; cursors are checked', async () => {
    const dir = await tempDir();
    const store = await openStore(dir);
    const a = scopeOf(['a']);
    await store.write(a, 'x', value(1, 1, { expiresAtMs: 1234 }));
    await store.write(a, 'id with %', value(1));
    await store.write(scopeOf(['a', '0']), 'first', value(1));
    await Promise.all(Array.from({ length: 2000 }, (_, n) => store.write(scopeOf(['a', 'b', `${n % 10}`]), `${n}`, value(1))));
    await store.write(scopeOf(['a', 'c/:d', 'e']), 'deep', value(1));
    await store.write(scopeOf(['a2']), 'sibling', value(1));
    await store.write(ROOT_SCOPE, 'root', value(1));
    const page = await store.list(a, { limit: 100 });
    expect(page.scopes).toEqual(['0', 'b', 'c/:d']);
    expect(page.items.map((item) => item.id)).toEqual(['id with %', 'x']);
    expect(page.items[1]).toMatchObject({ expiresAtMs: 1234 });
    expect(page.cursor).toBeNull();
    const paged = await listAll(store, a, 1);
    expect(paged).toEqual({ items: page.items, scopes: page.scopes, pages: 5 });
    expect((await store.list(ROOT_SCOPE, { limit: 10 })).scopes).toEqual(['a', 'a2']);
    expect((await store.list(scopeOf(['nothing']), { limit: 10 })).items).toEqual([]);
    const first = await store.list(a, { limit: 1 });
    const other = await store.list(scopeOf(['a2']), { limit: 1 });
    expect(first.cursor).not.toBeNull();
    await expect(store.list(scopeOf(['a2']), { cursor: first.cursor!, limit: 1 })).rejects.toThrow(TypeError);
    await expect(store.list(a, { cursor: 'not a cursor', limit: 1 })).rejects.toThrow(TypeError);
    await expect(store.list(a, { cursor: Buffer.from('a/b/c/').toString('base64url'), limit: 1 })).rejects.toThrow(TypeError);
    expect(other.cursor).toBeNull();
  });
});

/** Writes a database as hoard 0.3 did (layout 2: records of versions 1 and 2, `b` entries, no sizes or indexes). */
async function layout2Directory(dir: string, extra: (db: Level<Buffer, Buffer>) => Promise<void> = async () => {}): Promise<void> {
  const db = new Level<Buffer, Buffer>(dir, { keyEncoding: 'buffer', valueEncoding: 'buffer' });
  await db.put(Buffer.from('mformat'), Buffer.from('2'));
  for (let n = 0; n < 30; n++) {
    const key = itemKey(scopeOf([`s${n % 3}`]), `k${n}`);
    await db.put(Buffer.from(`i${key}`), encodeRecord({ modified: 1_600_000_000 + 100 * n, value: { encoding: 'json', bytes: Buffer.from(`"${n}"`) } }));
  }
  const name = 'ab/0123456789ab-0';
  await mkdir(join(dir, 'blobs', 'ab'), { recursive: true });
  await writeFile(join(dir, 'blobs', name), new Uint8Array(BLOB_MIN_BYTES).fill(7));
  const big = itemKey(ROOT_SCOPE, 'big');
  await db.put(Buffer.from(`i${big}`), encodeBlobRecord({ modified: 1_500_000_000, value: { encoding: 'binary', bytes: new Uint8Array(BLOB_MIN_BYTES) } }, name));
  await db.put(Buffer.from(`b${big}`), Buffer.from(name));
  await extra(db);
  await db.close();
}

describe('LevelStore migration', () => {
  test('a layout-2 directory is counted at open, indexed by modified time, and read as before', async () => {
    const dir = await tempDir();
    await layout2Directory(dir);
    const expected = await recount(dir);
    const lines: string[] = [];
    const store = await openStore(dir, { memoryCacheBytes: 0, log: (line) => lines.push(line) });
    expect(plain(store.usage())).toEqual(plain(expected));
    expect(expected.items).toBe(31);
    // One line as the migration starts, one as it ends, with the count.
    expect(lines).toHaveLength(2);
    expect(lines[1]).toContain('31 items');
    // The oldest modified first: what a layout-2 cache knows of use.
    expect((await store.leastRecent({ limit: 3 })).keys).toEqual([':big', 's0/:k0', 's1/:k1']);
    expect(store.read(scopeOf(['s1']), 'k4')).toEqual({ modified: 1_600_000_400, value: { encoding: 'json', bytes: Buffer.from('"4"') } });
    expect(store.read(ROOT_SCOPE, 'big')!.value.bytes).toEqual(Buffer.from(new Uint8Array(BLOB_MIN_BYTES).fill(7)));
    // A read counts at once: it is written before the listing.
    expect((await store.leastRecent({ limit: 3 })).keys).toEqual(['s0/:k0', 's1/:k1', 's2/:k2']);
    expect(await store.verify({ fix: false })).toMatchObject({ driftedScopes: [], strayEntries: 0, orphanFiles: 0 });
    await store.close();
    const raw = new Level<string, string>(dir);
    expect(await raw.get('mformat')).toBe('3');
    await raw.close();
  });

  test('a migration cut short (format still 2, some meta and index entries written, some wrong) is done again at the next open', async () => {
    const dir = await tempDir();
    await layout2Directory(dir, async (db) => {
      await db.put(Buffer.from('ts0/:k0'), Buffer.alloc(16, 1));
      await db.put(Buffer.from('ts0/:gone'), Buffer.alloc(16));
      await db.put(Buffer.from('r\0\0\0\0\0\0s0/:gone'), Buffer.alloc(0));
      await db.put(Buffer.from('cs0'), Buffer.alloc(16));
      await db.put(Buffer.from('cnone'), Buffer.alloc(16));
    });
    const expected = await recount(dir);
    const store = await openStore(dir);
    expect(plain(store.usage())).toEqual(plain(expected));
    expect(await store.verify({ fix: false })).toMatchObject({ driftedScopes: [], strayEntries: 0 });
  });
});

describe('LevelStore verify', () => {
  test('finds and fixes a counter edited in the database, a missing meta entry, a stray index entry and an orphan file', async () => {
    const dir = await tempDir();
    const store = await openStore(dir);
    await store.write(scopeOf(['p']), 'one', value(100));
    await store.write(scopeOf(['p']), 'two', value(BLOB_MIN_BYTES));
    await store.write(scopeOf(['q']), 'three', value(10, 1, { expiresAtMs: 100 }));
    const clean = await store.verify({ fix: false });
    expect(clean).toMatchObject({ driftedScopes: [], strayEntries: 0, orphanFiles: 0, fixed: false });
    expect(clean.kept).toEqual(clean.counted);
    expect(clean.counted).toEqual({ bytes: store.usage().bytes, items: 3 });
    await store.close();

    const raw = new Level<Buffer, Buffer>(dir, { keyEncoding: 'buffer', valueEncoding: 'buffer' });
    const counter = Buffer.alloc(16);
    counter.writeDoubleLE(5, 0);
    counter.writeDoubleLE(1, 8);
    await raw.put(Buffer.from('cp'), counter);
    await raw.del(Buffer.from('tq/:three'));
    for await (const key of raw.keys({ gte: Buffer.from('r'), lt: Buffer.from('s') })) if (key.toString().endsWith('p/:one')) await raw.del(key);
    await raw.put(Buffer.from('x\0\0\0\0\0\x01q/:nothing'), Buffer.alloc(0));
    await raw.close();
    await mkdir(join(dir, 'blobs', '0f'), { recursive: true });
    await writeFile(join(dir, 'blobs', '0f', 'ffffffffffff-0'), 'orphan');

    const found = await verifyDirectory(dir, { fix: false });
    // Strays: the item without its meta entry, its recency and expiry entries (which no meta names), the expiry entry of
    // nothing, the item without its recency entry.
    expect(found).toMatchObject({ driftedScopes: ['p'], orphanFiles: 1, orphanBytes: 6, strayEntries: 5, fixed: false });
    expect(found.kept.bytes).not.toBe(found.counted.bytes);
    const fixed = await verifyDirectory(dir, { fix: true });
    expect(fixed).toMatchObject({ driftedScopes: ['p'], orphanFiles: 1, strayEntries: 5, fixed: true });
    const after = await verifyDirectory(dir, { fix: false });
    expect(after).toMatchObject({ driftedScopes: [], orphanFiles: 0, strayEntries: 0 });
    expect(after.kept).toEqual(fixed.counted);
    const reopened = await openStore(dir);
    expect(plain(reopened.usage())).toEqual(plain(await (async () => {
      await reopened.close();
      return recount(dir);
    })()));
    const last = await openStore(dir);
    expect(await last.expired(1000, 10)).toEqual(['q/:three']);
    expect((await last.leastRecent({ limit: 10 })).keys.sort()).toEqual(['p/:one', 'p/:two', 'q/:three']);
  });

  test('online: fixes go through the write queue while writes go on, and files of writes under way are not orphans', async () => {
    const dir = await tempDir();
    const store = await openStore(dir);
    for (let n = 0; n < 200; n++) await store.write(scopeOf([`s${n % 4}`]), `k${n}`, value(n % 2 ? BLOB_MIN_BYTES : 50));
    let writing = true;
    const writer = (async () => {
      for (let n = 0; writing; n++) {
        await store.write(scopeOf([`s${n % 4}`]), `k${n % 200}`, value(n % 3 ? BLOB_MIN_BYTES + n : 20));
        if (n % 5 === 0) await store.delete(scopeOf([`s${n % 4}`]), `k${(n * 7) % 200}`);
      }
    })();
    const reports = [];
    for (let n = 0; n < 5; n++) reports.push(await store.verify({ fix: n % 2 === 1 }));
    writing = false;
    await writer;
    for (const report of reports) expect(report).toMatchObject({ driftedScopes: [], strayEntries: 0, orphanFiles: 0 });
    await store.close();
    const expected = await recount(dir);
    const reopened = await openStore(dir);
    expect(plain(reopened.usage())).toEqual(plain(expected));
  });
});

describe('the default size limit', () => {
  test('is 10 GiB on a large filesystem', async () => {
    const store = await LevelStore.open(await tempDir());
    onTestFinished(() => store.close());
    const { blocks, bsize } = await statfs(store.directory);
    // This machine's temporary directory is on a filesystem of more than 100 GiB, or the case below covers it.
    if (blocks * bsize >= 100 * 1024 ** 3) expect(store.usage().limitBytes).toBe(MAX_DEFAULT_SIZE_BYTES);
    else expect(store.usage().limitBytes).toBe(Math.floor((blocks * bsize) / 10));
  });

  test.runIf(process.getuid?.() === 0)('is a tenth of a small filesystem, so a cache never fills a small disk', async () => {
    const disk = join(await tempDir(), 'disk');
    await mkdir(disk);
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=8m', 'tmpfs', disk]);
    onTestFinished(() => void execFileSync('umount', ['-l', disk]));
    const store = await LevelStore.open(join(disk, 'data'));
    onTestFinished(() => store.close());
    expect(store.usage().limitBytes).toBe(Math.floor((8 * 1024 * 1024) / 10));
    const scope = scopeOf(['s']);
    await expect(store.write(scope, 'big', { modified: 1, value: { encoding: 'binary', bytes: new Uint8Array(900 * 1024) } })).rejects.toMatchObject({
      code: 'CACHE_OVER_SIZE_LIMIT',
    });
    expect(store.usage()).toMatchObject({ bytes: 0, items: 0 });
  });
});
