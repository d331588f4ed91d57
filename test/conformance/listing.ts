import { expect, test } from 'vitest';
import type { Cache, ListPage } from '../../src/index.js';
import { testWhen, clockNow, passTime, type Suite } from './support.js';

/** Every page of a listing from the start, with the page sizes seen. */
async function listAll(cache: Cache<unknown>, limit?: number): Promise<{ ids: string[]; scopes: string[]; pages: ListPage[] }> {
  const pages: ListPage[] = [];
  let cursor: string | undefined;
  do {
    const page = await cache.list(limit === undefined ? (cursor === undefined ? {} : { cursor }) : { cursor, limit });
    pages.push(page);
    cursor = page.cursor ?? undefined;
  } while (cursor !== undefined);
  return { ids: pages.flatMap((page) => page.items.map((item) => item.id)), scopes: pages.flatMap((page) => page.scopes), pages };
}

/** A refusal of bad listing arguments: a TypeError in this process, CACHE_INVALID_PARAMS from a daemon (what the wire says). */
async function expectRefused(promise: Promise<unknown>): Promise<void> {
  const error = await promise.then(
    () => undefined,
    (reason: unknown) => reason,
  );
  expect(error instanceof TypeError || (error as { code?: string } | undefined)?.code === 'CACHE_INVALID_PARAMS', String(error)).toBe(true);
}

/** Listing: the ids and nested scope names of a scope, in pages, bounded, consistent while others write. */
export function listing({ open, features }: Suite): void {
  const sample = features.values === 'binary' ? new Uint8Array([1, 2, 3]) : 'a value';
  const stored = <T>(entries: T[]): T[] => (features.stores ? entries : []);

  test('an empty scope lists nothing, on one last page', async () => {
    const { cache } = await open();
    expect(await cache.list()).toEqual({ items: [], scopes: [], cursor: null });
    expect(await cache.withScope('never used').list({ limit: 1 })).toEqual({ items: [], scopes: [], cursor: null });
  });

  test('lists the items with their figures, and the nested scopes that hold items', async () => {
    const subject = await open();
    const { cache } = subject;
    const before = clockNow(subject);
    await cache.set('plain', sample, { modified: 1234.5 });
    await cache.set('expiring', sample, { ttlMs: 600_000 });
    await cache.withScope('sub').set('inside', sample);
    await cache.withScope('deep').withScope('er').set('inside', sample);
    cache.withScope('made but empty');
    await cache.withScope('emptied').set('gone', sample);
    await cache.withScope('emptied').delete('gone');
    await cache.withScope('cleared').set('gone', sample);
    await cache.withScope('cleared').clear();
    const page = await cache.list();
    expect(page.cursor).toBeNull();
    expect(page.items.map((item) => item.id).sort()).toEqual(stored(['expiring', 'plain']));
    expect([...page.scopes].sort()).toEqual(stored(['deep', 'sub']));
    if (!features.stores) return;
    const plain = page.items.find((item) => item.id === 'plain')!;
    expect(plain).toMatchObject({ modified: 1234.5, expires: null });
    expect(plain.sizeBytes).toBeGreaterThanOrEqual(0);
    expect(plain.accessed === null || typeof plain.accessed === 'number').toBe(true);
    const expiring = page.items.find((item) => item.id === 'expiring')!;
    expect(expiring.expires).toBeGreaterThanOrEqual((before + 600_000) / 1000);
    expect((await cache.withScope('deep').list()).scopes).toEqual(['er']);
    expect((await cache.withScope('deep').withScope('er').list()).items.map((item) => item.id)).toEqual(['inside']);
  });

  test('pages with a cursor give every entry once, in key order, at most limit a page', async () => {
    const { cache } = await open();
    const ids = Array.from({ length: 25 }, (_, n) => `item-${String(n).padStart(2, '0')}`);
    for (const id of ids) await cache.set(id, sample);
    for (const name of ['s1', 's2', 's3']) await cache.withScope(name).set('x', sample);
    const all = await listAll(cache, 7);
    for (const page of all.pages) expect(page.items.length + page.scopes.length).toBeLessThanOrEqual(7);
    expect(all.ids).toEqual(stored(ids));
    expect([...all.scopes].sort()).toEqual(stored(['s1', 's2', 's3']));
    // 28 entries in pages of 7: a store may need one more, empty, page to know that it reached the end.
    expect(all.pages.length).toBeGreaterThanOrEqual(features.stores ? 4 : 1);
    expect(all.pages.length).toBeLessThanOrEqual(features.stores ? 5 : 1);
    expect((await listAll(cache, 1)).ids).toEqual(stored(ids));
  });

  test('a listing skips expired items', async () => {
    const subject = await open();
    const { cache } = subject;
    const ttlMs = subject.clock ? 60_000 : 5;
    await cache.set('expiring', sample, { ttlMs, staleMs: 600_000 });
    const expiresBy = clockNow(subject) + ttlMs;
    await cache.set('kept', sample);
    await passTime(subject, expiresBy);
    expect((await listAll(cache)).ids).toEqual(stored(['kept']));
    expect((await listAll(cache, 1)).ids).toEqual(stored(['kept']));
  });

  test('10,000 items listed in pages while another writer runs: no duplicates, nothing missed that was present throughout', async () => {
    const { cache } = await open();
    const scope = cache.withScope('many');
    const ids = Array.from({ length: 10_000 }, (_, n) => `stable-${n}`);
    for (let start = 0; start < ids.length; start += 500) {
      await Promise.all(ids.slice(start, start + 500).map((id) => scope.set(id, sample)));
    }
    let listing = true;
    let writes = 0;
    const writer = (async () => {
      // New items, items deleted and written again, and stable items overwritten, until the listing ends.
      for (let n = 0; listing; n++) {
        await scope.set(`new-${n}`, sample);
        await scope.delete(`churn-${n % 50}`);
        await scope.set(`churn-${(n + 25) % 50}`, sample);
        await scope.set(ids[(n * 7919) % ids.length]!, sample);
        await scope.withScope(`sub-${n % 3}`).set('x', sample);
        writes++;
      }
    })();
    let all: Awaited<ReturnType<typeof listAll>>;
    try {
      all = await listAll(scope, 700);
    } finally {
      listing = false;
      await writer;
    }
    expect(writes).toBeGreaterThan(0);
    expect(new Set(all.ids).size).toBe(all.ids.length);
    expect(new Set(all.scopes).size).toBe(all.scopes.length);
    const listed = new Set(all.ids);
    expect(ids.filter((id) => !listed.has(id))).toEqual(features.stores ? [] : ids);
    for (const page of all.pages) expect(page.items.length + page.scopes.length).toBeLessThanOrEqual(700);
  });

  test('a limit out of 1..10,000 or not an integer, or a cursor that is not one, is refused', async () => {
    const { cache } = await open();
    const loose = cache as unknown as { list(options: unknown): Promise<ListPage> };
    for (const limit of [0, -1, 1.5, 10_001, Number.NaN, Infinity, '5', null]) {
      await expect(loose.list({ limit }), String(limit)).rejects.toBeInstanceOf(TypeError);
    }
    for (const cursor of [5, {}, null, true]) {
      await expect(loose.list({ cursor }), JSON.stringify(cursor)).rejects.toBeInstanceOf(TypeError);
    }
    await expect(loose.list('options')).rejects.toBeInstanceOf(TypeError);
    expect((await cache.list({ limit: 10_000 })).cursor).toBeNull();
    await expectRefused(cache.list({ cursor: 'not a cursor!' }));
  });

  testWhen(features.stores)("another scope's cursor is refused", async () => {
    const { cache } = await open();
    for (const id of ['a', 'b', 'c']) await cache.withScope('one').set(id, sample);
    await cache.withScope('two').set('a', sample);
    const { cursor } = await cache.withScope('one').list({ limit: 1 });
    expect(cursor).toEqual(expect.any(String));
    expect((await cache.withScope('one').list({ cursor: cursor! })).items.map((item) => item.id)).toEqual(['b', 'c']);
    await expectRefused(cache.withScope('two').list({ cursor: cursor! }));
  });
}
