import { expect, test } from 'vitest';
import { isFree, isWaiting, type Suite, track, valueOf } from './support.js';

/** Clearing a scope: its subtree only, through every scope object, ordered with the locks. */
export function clear({ open, features }: Suite): void {
  const sample = features.values === 'binary' ? new Uint8Array([1]) : 'value';
  const stored = (value: unknown): unknown => (features.stores ? value : undefined);

  test('clear removes nested scopes too, also as seen through scope objects made before it', async () => {
    const { cache } = await open();
    const child = cache.withScope('child');
    const grandchild = child.withScope('grandchild');
    await cache.set('root-item', sample);
    await child.set('child-item', sample);
    await grandchild.set('grandchild-item', sample);
    await cache.clear();
    expect(await valueOf(cache, 'root-item')).toBeUndefined();
    expect(await valueOf(child, 'child-item')).toBeUndefined();
    expect(await valueOf(grandchild, 'grandchild-item')).toBeUndefined();
    expect(await valueOf(cache.withScope('child'), 'child-item')).toBeUndefined();
    await grandchild.set('after', sample);
    expect(await valueOf(cache.withScope('child').withScope('grandchild'), 'after')).toEqual(stored(sample));
  });

  test('clear leaves parent and sibling scopes alone', async () => {
    const { cache } = await open();
    const a = cache.withScope('a');
    const ab = a.withScope('b');
    const sibling = cache.withScope('a2');
    const nestedSibling = a.withScope('c');
    await cache.set('parent-item', sample);
    await a.set('a-item', sample);
    await ab.set('ab-item', sample);
    await sibling.set('sibling-item', sample);
    await nestedSibling.set('c-item', sample);
    await ab.clear();
    expect(await valueOf(ab, 'ab-item')).toBeUndefined();
    expect(await valueOf(a, 'a-item')).toEqual(stored(sample));
    expect(await valueOf(nestedSibling, 'c-item')).toEqual(stored(sample));
    await a.clear();
    expect(await valueOf(a, 'a-item')).toBeUndefined();
    expect(await valueOf(nestedSibling, 'c-item')).toBeUndefined();
    expect(await valueOf(cache, 'parent-item')).toEqual(stored(sample));
    expect(await valueOf(sibling, 'sibling-item')).toEqual(stored(sample));
  });

  test('clear waits for locks held in its subtree', async () => {
    const subject = await open();
    const { cache } = subject;
    const scope = cache.withScope('s');
    await scope.withScope('deep').set('id', sample);
    const reader = await scope.get('x');
    const writer = await scope.withScope('deep').getset('id');
    const clearing = track(scope.clear());
    expect(await isWaiting(subject, clearing)).toBe(true);
    await reader.release();
    expect(await isWaiting(subject, clearing)).toBe(true);
    await writer.set(sample);
    await writer.release();
    await clearing.promise;
    expect(await valueOf(scope.withScope('deep'), 'id')).toBeUndefined();
  });

  test('clear does not wait for locks outside its subtree', async () => {
    const { cache } = await open();
    const parentLock = await cache.getset('id');
    const siblingLock = await cache.withScope('sibling').getset('id');
    const prefixLock = await cache.withScope('s2').getset('id');
    await cache.withScope('s').clear();
    await Promise.all([parentLock.release(), siblingLock.release(), prefixLock.release()]);
  });

  test('lock requests made after a clear queue behind it', async () => {
    const subject = await open();
    const { cache } = subject;
    const scope = cache.withScope('s');
    await scope.set('old', sample);
    const reader = await scope.get('old');
    const clearing = track(scope.clear());
    expect(await isWaiting(subject, clearing)).toBe(true);
    const laterWrite = track(scope.withScope('nested').set('new', sample));
    const laterRead = track(scope.get('old'));
    expect(await isWaiting(subject, laterWrite)).toBe(true);
    expect(await isWaiting(subject, laterRead)).toBe(true);
    expect(await isFree(scope, 'unrelated')).toBe(false);
    expect(await isFree(cache, 'outside')).toBe(true);
    await reader.release();
    await clearing.promise;
    await laterWrite.promise;
    await using seen = await laterRead.promise;
    expect(seen.item).toBeNull();
    expect(await valueOf(scope.withScope('nested'), 'new')).toEqual(stored(sample));
  });

  test('a clear and an overlapping clear take turns, and a set issued between them is cleared by the second', async () => {
    const subject = await open();
    const { cache } = subject;
    const inner = cache.withScope('a').withScope('b');
    const holder = await inner.getset('id');
    const innerClear = track(inner.clear());
    const write = track(inner.set('between', sample));
    const outerClear = track(cache.withScope('a').clear());
    expect(await isWaiting(subject, outerClear)).toBe(true);
    await holder.release();
    await Promise.all([innerClear.promise, write.promise, outerClear.promise]);
    expect(await valueOf(inner, 'between')).toBeUndefined();
  });
}
