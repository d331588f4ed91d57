import { describe, expect, test } from 'vitest';
import { testWhen, inScope, SCOPE_PATHS, type Suite, valueOf } from './support.js';

/** The cases of Betty's own cache tests, each with no scope, one scope and nested scopes. */
export function basics({ open, features }: Suite): void {
  const sample = features.values === 'binary' ? new Uint8Array([1, 2, 3]) : 'a value';
  const other = features.values === 'binary' ? new Uint8Array([4, 5]) : 'another value';

  test('withScope returns the same object for the same name, and another for another name', async () => {
    const { cache } = await open();
    const a = cache.withScope('a');
    expect(cache.withScope('a')).toBe(a);
    expect(cache.withScope('b')).not.toBe(a);
    expect(a.withScope('x')).toBe(a.withScope('x'));
    expect(a.withScope('x')).not.toBe(cache.withScope('x'));
  });

  describe.each(SCOPE_PATHS.map((path) => ({ path, label: path.length ? path.join(' > ') : 'no scope' })))(
    'in $label',
    ({ path }) => {
      test('get without a hit finds nothing', async () => {
        const cache = inScope((await open()).cache, path);
        await using got = await cache.get('missing');
        expect(got.item).toBeNull();
      });

      testWhen(features.stores)('set, then get returns the value with modified set to now', async () => {
        const cache = inScope((await open()).cache, path);
        const before = Date.now() / 1000;
        await cache.set('id', sample);
        const after = Date.now() / 1000;
        await using got = await cache.get('id');
        expect(got.item).not.toBeNull();
        expect(await got.item!.value()).toEqual(sample);
        expect(got.item!.modified).toBeGreaterThanOrEqual(before);
        expect(got.item!.modified).toBeLessThanOrEqual(after);
      });

      testWhen(features.stores)('set with modified keeps that time exactly', async () => {
        const cache = inScope((await open()).cache, path);
        for (const modified of [1700000000.5, 0.1 + 0.2, 0, -86400.25, 1e15 + 0.125]) {
          await cache.set('id', sample, { modified });
          await using got = await cache.get('id');
          expect(got.item!.modified).toBe(modified);
        }
      });

      testWhen(features.stores)('set replaces a value', async () => {
        const cache = inScope((await open()).cache, path);
        await cache.set('id', sample);
        await cache.set('id', other);
        expect(await valueOf(cache, 'id')).toEqual(other);
      });

      test('getset without a hit gives no item and a setter that stores the value', async () => {
        const cache = inScope((await open()).cache, path);
        {
          await using gs = await cache.getset('id');
          expect(gs.item).toBeNull();
          expect(gs.set).toBeTypeOf('function');
          await gs.set(sample);
        }
        expect(await valueOf(cache, 'id')).toEqual(features.stores ? sample : undefined);
      });

      testWhen(features.stores)('getset with a hit gives the item', async () => {
        const cache = inScope((await open()).cache, path);
        await cache.set('id', sample, { modified: 1234.5 });
        await using gs = await cache.getset('id');
        expect(gs.item!.modified).toBe(1234.5);
        expect(await gs.item!.value()).toEqual(sample);
        await gs.set(other);
        await using again = await cache.getset('id', { wait: false });
        expect(again.set).toBeNull();
      });

      test('getset with wait: false while the lock is held gives neither item nor setter', async () => {
        const cache = inScope((await open()).cache, path);
        await cache.set('id', sample);
        const holder = await cache.getset('id');
        const attempt = await cache.getset('id', { wait: false });
        expect(attempt.item).toBeNull();
        expect(attempt.set).toBeNull();
        await attempt.release();
        await attempt.release();
        await holder.release();
        await using free = await cache.getset('id', { wait: false });
        expect(free.set).toBeTypeOf('function');
        expect(free.item === null).toBe(!features.stores);
      });

      test('delete removes the item, and deleting a missing item is no error', async () => {
        const cache = inScope((await open()).cache, path);
        await cache.set('id', sample);
        await cache.set('kept', sample);
        await cache.delete('id');
        await cache.delete('id');
        await cache.delete('never-set');
        expect(await valueOf(cache, 'id')).toBeUndefined();
        expect(await valueOf(cache, 'kept')).toEqual(features.stores ? sample : undefined);
      });

      test('clear removes every item', async () => {
        const cache = inScope((await open()).cache, path);
        await cache.set('one', sample);
        await cache.set('two', other);
        await cache.clear();
        expect(await valueOf(cache, 'one')).toBeUndefined();
        expect(await valueOf(cache, 'two')).toBeUndefined();
        await cache.set('three', sample);
        expect(await valueOf(cache, 'three')).toEqual(features.stores ? sample : undefined);
      });
    },
  );

  testWhen(!features.stores)('stores nothing: set, then get finds nothing', async () => {
    const { cache } = await open();
    await cache.set('id', sample);
    await using got = await cache.get('id');
    expect(got.item).toBeNull();
  });
}
