import { expect, test } from 'vitest';
import type { Cache } from '../../src/index.js';
import { expectCode, isWaiting, type Suite, track } from './support.js';

const NOT_STRINGS: unknown[] = [undefined, null, 1, {}, [], Symbol('id'), new String('boxed')];

/** Argument mistakes are TypeErrors; a closed cache rejects with CACHE_CLOSED. */
export function errors({ open, features }: Suite): void {
  const sample = features.values === 'binary' ? new Uint8Array([1]) : 'value';

  test('an id that is not a string is a TypeError in every method', async () => {
    const { cache } = await open();
    const loose = cache as unknown as Record<'get' | 'getset' | 'set' | 'delete', (id: unknown, ...rest: unknown[]) => Promise<unknown>>;
    for (const id of NOT_STRINGS) {
      await expect(loose.get(id)).rejects.toBeInstanceOf(TypeError);
      await expect(loose.getset(id)).rejects.toBeInstanceOf(TypeError);
      await expect(loose.set(id, sample)).rejects.toBeInstanceOf(TypeError);
      await expect(loose.delete(id)).rejects.toBeInstanceOf(TypeError);
    }
  });

  test('a scope name that is empty or not a string is a TypeError', async () => {
    const { cache } = await open();
    const withScope = cache.withScope.bind(cache) as (name: unknown) => Cache<unknown>;
    for (const name of ['', ...NOT_STRINGS]) expect(() => withScope(name)).toThrow(TypeError);
  });

  test('bad options are TypeErrors', async () => {
    const { cache } = await open();
    const loose = cache as unknown as Record<string, (...args: unknown[]) => Promise<unknown>>;
    for (const modified of ['1', Number.NaN, Infinity, null, 10n]) {
      await expect(loose.set!('id', sample, { modified })).rejects.toBeInstanceOf(TypeError);
    }
    await expect(loose.get!('id', 'options')).rejects.toBeInstanceOf(TypeError);
    await expect(loose.get!('id', { signal: 'abort' })).rejects.toBeInstanceOf(TypeError);
    await expect(loose.getset!('id', { wait: 'no' })).rejects.toBeInstanceOf(TypeError);
    await expect(loose.getset!('id', { signal: {} })).rejects.toBeInstanceOf(TypeError);
  });

  test('after close every call rejects with CACHE_CLOSED, in every scope, and close is idempotent', async () => {
    const subject = await open();
    const scope = subject.cache.withScope('s');
    await subject.close();
    await subject.close();
    for (const cache of [subject.cache, scope, scope.withScope('made after close')]) {
      await expectCode(cache.get('id'), 'CACHE_CLOSED');
      await expectCode(cache.getset('id'), 'CACHE_CLOSED');
      await expectCode(cache.getset('id', { wait: false }), 'CACHE_CLOSED');
      await expectCode(cache.set('id', sample), 'CACHE_CLOSED');
      await expectCode(cache.delete('id'), 'CACHE_CLOSED');
      await expectCode(cache.clear(), 'CACHE_CLOSED');
    }
  });

  test('close rejects waiting calls with CACHE_CLOSED, and a held setter then rejects too', async () => {
    const subject = await open();
    const { cache } = subject;
    const holder = await cache.getset('id');
    const waiters = [track(cache.get('id')), track(cache.getset('id')), track(cache.set('id', sample)), track(cache.clear())];
    expect(await isWaiting(subject, waiters[0]!)).toBe(true);
    await subject.close();
    for (const waiter of waiters) await expectCode(waiter.promise, 'CACHE_CLOSED');
    await expectCode(holder.set(sample), 'CACHE_CLOSED');
    await holder.release();
    await expectCode(holder.set(sample), 'CACHE_LOCK_NOT_HELD');
  });

  test('a value read before close can still be decoded after it', async () => {
    const subject = await open();
    await subject.cache.set('id', sample);
    const got = await subject.cache.get('id');
    await got.release();
    await subject.close();
    if (features.stores) expect(await got.item!.value()).toEqual(sample);
    else expect(got.item).toBeNull();
  });
}
