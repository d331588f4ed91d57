import { mkdir, readdir, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Level } from 'level';
import { describe, expect, onTestFinished, test } from 'vitest';
import { BLOB_MIN_BYTES } from '../src/level/blob-files.js';
import { LevelStore } from '../src/level/level-store.js';
import { repairLevelStore } from '../src/level/repair.js';
import { scopeOf } from '../src/scope-path.js';
import { type CodecName, LevelCache } from '../src/index.js';
import type { LevelCacheTestOptions } from '../src/level-cache.js';
import { cacheConformance, ManualClock } from './conformance/index.js';
import { tempDir } from './support/temp-dir.js';

/** A LevelCache in a fresh directory on a clock the test moves, closed when the test ends. */
async function openOnClock(options: LevelCacheTestOptions = {}): Promise<{ cache: LevelCache<unknown>; clock: ManualClock }> {
  const clock = new ManualClock();
  const cache = await LevelCache.open<unknown>(await tempDir(), { now: clock.now, ...options } as LevelCacheTestOptions);
  onTestFinished(() => cache.close());
  return { cache, clock };
}

for (const codec of ['json', 'binary', 'structured'] as CodecName[]) {
  cacheConformance(
    `LevelCache (${codec})`,
    async () => {
      const { cache, clock } = await openOnClock({ codec });
      return { cache, close: () => cache.close(), clock, expirations: async () => cache.usage().expirations };
    },
    { stores: true, values: codec, countsExpirations: true },
  );
}

cacheConformance(
  'LevelCache (json) in a scope, on the real clock',
  async () => {
    const root = await LevelCache.open<unknown>(await tempDir());
    onTestFinished(() => root.close());
    return { cache: root.withScope('outer'), close: () => root.close(), expirations: async () => root.usage().expirations };
  },
  { stores: true, values: 'json', countsExpirations: true },
);

describe('LevelCache on disk', () => {
  test('values, modified times and scopes survive close and reopen', async () => {
    const dir = await tempDir();
    const first = await LevelCache.open<unknown>(dir, { codec: 'structured' });
    await first.set('plain', new Map([['k', 1n]]), { modified: 1700000000.123456 });
    await first.withScope('a').withScope('b').set('', 'nested');
    await first.close();

    const second = await LevelCache.open<unknown>(dir, { codec: 'structured' });
    onTestFinished(() => second.close());
    await using got = await second.get('plain');
    expect(got.item!.modified).toBe(1700000000.123456);
    expect(await got.item!.value()).toStrictEqual(new Map([['k', 1n]]));
    await using nested = await second.withScope('a').withScope('b').get('');
    expect(await nested.item!.value()).toBe('nested');
  });

  test('a value stored with another codec is refused with CACHE_ENCODING_MISMATCH on value()', async () => {
    const dir = await tempDir();
    const asJson = await LevelCache.open<unknown>(dir, { codec: 'json' });
    await asJson.set('id', { a: 1 });
    await asJson.close();
    const asBinary = await LevelCache.open<Uint8Array>(dir, { codec: 'binary' });
    onTestFinished(() => asBinary.close());
    await using got = await asBinary.get('id');
    await expect(got.item!.value()).rejects.toMatchObject({ code: 'CACHE_ENCODING_MISMATCH' });
  });

  test('a damaged record is reported as CACHE_CORRUPT', async () => {
    const dir = await tempDir();
    await (await LevelCache.open(dir)).close();
    const raw = new Level<string, Buffer>(dir, { valueEncoding: 'buffer' });
    await raw.put('i:broken', Buffer.from([99, 1, 2]));
    await raw.put('i:bad-json', Buffer.from([1, 0, 0, 0, 0, 0, 0, 0, 0, 4, ...Buffer.from('json{')]));
    await raw.close();
    const cache = await LevelCache.open(dir);
    onTestFinished(() => cache.close());
    await expect(cache.get('broken')).rejects.toMatchObject({ code: 'CACHE_CORRUPT' });
    {
      // getset treats a damaged record as a miss, so that the value can be computed again.
      await using gs = await cache.getset('broken');
      expect(gs.item).toBeNull();
      await gs.set('mended');
    }
    await using mended = await cache.get('broken');
    expect(await mended.item!.value()).toBe('mended');
    await using bad = await cache.get('bad-json');
    await expect(bad.item!.value()).rejects.toMatchObject({ code: 'CACHE_CORRUPT' });
  });

  test('bad arguments to open are TypeErrors', async () => {
    const dir = await tempDir();
    const open = LevelCache.open as (directory: unknown, options?: unknown) => Promise<unknown>;
    await expect(open(undefined)).rejects.toBeInstanceOf(TypeError);
    await expect(open('')).rejects.toBeInstanceOf(TypeError);
    await expect(open(dir, { codec: 'yaml' })).rejects.toBeInstanceOf(TypeError);
  });
});

/** The files in a store's `blobs/`, as `subdirectory/name`. */
async function blobFiles(dir: string): Promise<string[]> {
  const root = join(dir, 'blobs');
  const subdirectories = await readdir(root).catch(() => [] as string[]);
  const files = await Promise.all(subdirectories.map(async (sub) => (await readdir(join(root, sub))).map((name) => `${sub}/${name}`)));
  return files.flat().sort();
}

async function layoutOf(dir: string): Promise<string> {
  const raw = new Level<string, string>(dir);
  try {
    return (await raw.get('mformat'))!;
  } finally {
    await raw.close();
  }
}

const big = (fill: number, bytes = BLOB_MIN_BYTES): Uint8Array => new Uint8Array(bytes).fill(fill);

describe('LevelCache with large values, each in a file of its own', () => {
  test('a large value survives reopen, read from its file; replacing or deleting it removes the file', async () => {
    const dir = await tempDir();
    const first = await LevelCache.open<Uint8Array>(dir, { codec: 'binary' });
    await first.set('small', big(1, BLOB_MIN_BYTES - 1));
    await first.close();
    expect(await blobFiles(dir)).toEqual([]);
    expect(await layoutOf(dir)).toBe('3');

    const cache = await LevelCache.open<Uint8Array>(dir, { codec: 'binary', memoryCacheBytes: 0 });
    await cache.set('large', big(2), { modified: 1700000000.5 });
    const [file] = await blobFiles(dir);
    expect(file).toBeDefined();
    await cache.close();
    expect(await layoutOf(dir)).toBe('3');

    const reopened = await LevelCache.open<Uint8Array>(dir, { codec: 'binary', memoryCacheBytes: 0 });
    {
      await using got = await reopened.get('large');
      expect(got.item!.modified).toBe(1700000000.5);
      expect(await got.item!.value()).toStrictEqual(big(2));
    }
    await reopened.set('large', big(3, 100_000));
    await using replaced = await reopened.get('large');
    expect(await replaced.item!.value()).toStrictEqual(big(3, 100_000));
    await replaced.release();
    await reopened.set('large', big(4, 10));
    await reopened.set('other', big(5));
    await reopened.delete('other');
    await reopened.close();
    // Closing waits for the removals under way.
    expect(await blobFiles(dir)).toEqual([]);
    const last = await LevelCache.open<Uint8Array>(dir, { codec: 'binary' });
    onTestFinished(() => last.close());
    await using small = await last.get('large');
    expect(await small.item!.value()).toStrictEqual(big(4, 10));
  });

  test('clear removes the files of the scope\u2019s items and leaves the others\u2019', async () => {
    const dir = await tempDir();
    const cache = await LevelCache.open<Uint8Array>(dir, { codec: 'binary', memoryCacheBytes: 0 });
    const a = cache.withScope('a');
    for (let n = 0; n < 5; n++) await a.set(`k${n}`, big(n));
    await a.withScope('inner').set('k', big(9));
    await a.set('small', big(8, 10));
    await cache.withScope('b').set('k', big(7));
    expect(await blobFiles(dir)).toHaveLength(7);
    await a.clear();
    for (const id of ['k0', 'k4', 'small']) {
      await using gone = await a.get(id);
      expect(gone.item).toBeNull();
    }
    await cache.close();
    expect(await blobFiles(dir)).toHaveLength(1);
    const reopened = await LevelCache.open<Uint8Array>(dir, { codec: 'binary', memoryCacheBytes: 0 });
    onTestFinished(() => reopened.close());
    await using kept = await reopened.withScope('b').get('k');
    expect(await kept.item!.value()).toStrictEqual(big(7));
    await using inner = await reopened.withScope('a').withScope('inner').get('k');
    expect(inner.item).toBeNull();
  });

  test('a file that no record names, left by a crash, is removed when the store next opens; named ones stay', async () => {
    const dir = await tempDir();
    const cache = await LevelCache.open<Uint8Array>(dir, { codec: 'binary' });
    await cache.set('kept', big(1));
    await cache.close();
    const [named] = await blobFiles(dir);
    await mkdir(join(dir, 'blobs', '7f'), { recursive: true });
    await writeFile(join(dir, 'blobs', '7f', '0123456789ab-zz'), 'half a value');
    expect(await blobFiles(dir)).toEqual([named, '7f/0123456789ab-zz'].sort());
    // Closing waits for the sweep that opening starts.
    await (await LevelCache.open(dir)).close();
    expect(await blobFiles(dir)).toEqual([named]);
  });

  test('repair rebuilds the index of files from the records, so that no file a record names is swept', async () => {
    const dir = await tempDir();
    const cache = await LevelCache.open<Uint8Array>(dir, { codec: 'binary' });
    for (let n = 0; n < 3; n++) await cache.set(`k${n}`, big(n));
    await cache.delete('k2');
    await cache.close();
    const files = await blobFiles(dir);
    expect(files).toHaveLength(2);
    // As if repair had kept the records and lost the table holding their index entries; plus one stale entry.
    const raw = new Level<string, string>(dir);
    for await (const key of raw.keys({ gte: 'b', lt: 'c' })) await raw.del(key);
    await raw.put('b:gone', '00/000000000000-0');
    await raw.close();
    await repairLevelStore(dir);
    const index = new Level<string, string>(dir);
    const entries = await index.iterator({ gte: 'b', lt: 'c' }).all();
    await index.close();
    expect(entries.map(([, name]) => name).sort()).toEqual(files);
    expect(entries.map(([key]) => key).sort()).toEqual(['b:k0', 'b:k1']);
    const reopened = await LevelCache.open<Uint8Array>(dir, { codec: 'binary', memoryCacheBytes: 0 });
    await reopened.close();
    expect(await blobFiles(dir)).toEqual(files);
    const last = await LevelCache.open<Uint8Array>(dir, { codec: 'binary', memoryCacheBytes: 0 });
    onTestFinished(() => last.close());
    await using got = await last.get('k1');
    expect(await got.item!.value()).toStrictEqual(big(1));
  });

  test('with sync, large values are written, flushed with their directories, and read back after reopening', async () => {
    const dir = await tempDir();
    const store = await LevelStore.open(dir, { sync: true, memoryCacheBytes: 0 });
    const scope = scopeOf([]);
    for (let n = 0; n < 3; n++) await store.write(scope, `k${n}`, { modified: n, value: { encoding: 'binary', bytes: big(n) } });
    await store.delete(scope, 'k2');
    await store.close();
    expect(await blobFiles(dir)).toHaveLength(2);
    const reopened = await LevelStore.open(dir, { memoryCacheBytes: 0 });
    onTestFinished(() => reopened.close());
    expect(reopened.read(scope, 'k1')).toEqual({
      modified: 1,
      value: { encoding: 'binary', bytes: Buffer.from(big(1)) },
      file: { name: expect.stringMatching(/^[0-9a-f]{2}\//), lengthBytes: big(1).byteLength },
    });
    expect(reopened.read(scope, 'k2')).toBeUndefined();
  });

  test('a missing file reads as CACHE_CORRUPT, and getset computes the value again', async () => {
    const dir = await tempDir();
    const cache = await LevelCache.open<Uint8Array>(dir, { codec: 'binary', memoryCacheBytes: 0 });
    onTestFinished(() => cache.close());
    await cache.set('lost', big(1));
    const [file] = await blobFiles(dir);
    await unlink(join(dir, 'blobs', file!));
    await expect(cache.get('lost')).rejects.toMatchObject({ code: 'CACHE_CORRUPT', message: expect.stringContaining(file!) });
    {
      await using gs = await cache.getset('lost');
      expect(gs.item).toBeNull();
      await gs.set(big(2));
    }
    await using mended = await cache.get('lost');
    expect(await mended.item!.value()).toStrictEqual(big(2));
  });

  test('a value file that cannot be written fails the set with CACHE_STORAGE and keeps the old value', async () => {
    const dir = await tempDir();
    const cache = await LevelCache.open<Uint8Array>(dir, { codec: 'binary', memoryCacheBytes: 0 });
    onTestFinished(() => cache.close());
    await cache.set('item', big(1));
    // A file where the next value's subdirectory should be: mkdir fails, as a full or broken disk would.
    const next = (await blobFiles(dir)).length.toString(16).padStart(2, '0');
    await writeFile(join(dir, 'blobs', next), 'in the way');
    await expect(cache.set('item', big(2))).rejects.toMatchObject({ code: 'CACHE_STORAGE' });
    await using kept = await cache.get('item');
    expect(await kept.item!.value()).toStrictEqual(big(1));
  });
});
