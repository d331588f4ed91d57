import { expect, test } from 'vitest';
import { testWhen, isFree, type Suite, valueOf } from './support.js';

const AWKWARD_IDS = ['', '!', '/', ':', '%', '%25', '%3A', '\u0000', ' ', 'ключ', '键', '🔑', '\uD800', '\uDC00', '\uDC00\uD800', 'a/b', 'a:b', '!a!b'];
const SEPARATORS = ['!', '/', ':', '%', '%2F', '%3A', '\u0000', '.', '\\', '|', '#', '\uD800'];

/** Item ids and scope names: any string, never colliding. */
export function namespaces({ open, features }: Suite): void {
  const value = (text: string): unknown => (features.values === 'binary' ? new TextEncoder().encode(text) : text);

  testWhen(features.stores)('any string is an item id, and different ids are different items', async () => {
    const { cache } = await open();
    const scoped = cache.withScope('s');
    for (const target of [cache, scoped]) {
      for (const [n, id] of AWKWARD_IDS.entries()) await target.set(id, value(`v${n}`));
      for (const [n, id] of AWKWARD_IDS.entries()) expect(await valueOf(target, id)).toEqual(value(`v${n}`));
    }
  });

  testWhen(features.stores)('an item may share its id with a scope', async () => {
    const { cache } = await open();
    await cache.set('x', value('item x'));
    await cache.withScope('x').set('x', value('item x in scope x'));
    await cache.withScope('x').withScope('x').set('x', value('deeper'));
    expect(await valueOf(cache, 'x')).toEqual(value('item x'));
    expect(await valueOf(cache.withScope('x'), 'x')).toEqual(value('item x in scope x'));
    await cache.withScope('x').clear();
    expect(await valueOf(cache, 'x')).toEqual(value('item x'));
    expect(await valueOf(cache.withScope('x').withScope('x'), 'x')).toBeUndefined();
    await cache.delete('x');
    await cache.withScope('x').set('y', value('y'));
    expect(await valueOf(cache.withScope('x'), 'y')).toEqual(value('y'));
  });

  testWhen(features.stores)('a separator in a scope name or id never joins two addresses', async () => {
    const { cache } = await open();
    for (const sep of SEPARATORS) {
      const split = cache.withScope('a').withScope(`b${sep}c`);
      const joined = cache.withScope(`a${sep}b`);
      await cache.withScope('a').set(`b${sep}c`, value('scope a, id b+c'));
      await joined.set('c', value('scope a+b, id c'));
      await cache.withScope('a').withScope('b').set('c', value('scopes a, b, id c'));
      await split.set('d', value('scopes a, b+c'));
      await cache.withScope(`a${sep}b${sep}c`).set('d', value('one scope'));
      await cache.set(`a${sep}b`, value('root id a+b'));
      expect(await valueOf(cache.withScope('a'), `b${sep}c`)).toEqual(value('scope a, id b+c'));
      expect(await valueOf(joined, 'c')).toEqual(value('scope a+b, id c'));
      expect(await valueOf(cache.withScope('a').withScope('b'), 'c')).toEqual(value('scopes a, b, id c'));
      expect(await valueOf(split, 'd')).toEqual(value('scopes a, b+c'));
      expect(await valueOf(cache.withScope(`a${sep}b${sep}c`), 'd')).toEqual(value('one scope'));
      expect(await valueOf(cache, `a${sep}b`)).toEqual(value('root id a+b'));
      await cache.withScope('a').clear();
      expect(await valueOf(joined, 'c')).toEqual(value('scope a+b, id c'));
      expect(await valueOf(cache, `a${sep}b`)).toEqual(value('root id a+b'));
      await cache.clear();
    }
  });

  testWhen(features.stores)('a scope whose name starts with another scope\u2019s name is its sibling, not its child', async () => {
    const { cache } = await open();
    await cache.withScope('ab').set('id', value('ab'));
    await cache.withScope('a').clear();
    expect(await valueOf(cache.withScope('ab'), 'id')).toEqual(value('ab'));
  });

  test('locks follow the same addresses as items', async () => {
    const { cache } = await open();
    const held = await cache.withScope('a').getset('b!c');
    expect(await isFree(cache.withScope('a!b'), 'c')).toBe(true);
    expect(await isFree(cache.withScope('a').withScope('b'), 'c')).toBe(true);
    expect(await isFree(cache.withScope('a'), 'b!c')).toBe(false);
    await held.release();
  });

  test('scope names may be any non-empty string', async () => {
    const { cache } = await open();
    for (const name of AWKWARD_IDS.filter((id) => id !== '')) {
      const scope = cache.withScope(name);
      await scope.set('id', value(name));
      expect(await valueOf(scope, 'id')).toEqual(features.stores ? value(name) : undefined);
    }
  });
}
