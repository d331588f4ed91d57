import { expect, test } from 'vitest';
import { expectCode, isFree, isWaiting, type Suite, track, valueOf } from './support.js';

/** Per-item reader/writer locks: sharing, exclusion, FIFO order, abort, release. */
export function locks({ open, features }: Suite): void {
  const sample = features.values === 'binary' ? new Uint8Array([7]) : 'value';
  const other = features.values === 'binary' ? new Uint8Array([8]) : 'other';
  const stored = (value: unknown): unknown => (features.stores ? value : undefined);

  test('several get handles on one item coexist', async () => {
    const { cache } = await open();
    await cache.set('id', sample);
    const first = await cache.get('id');
    const second = await cache.get('id');
    const third = await cache.get('id');
    expect(second.item?.modified).toBe(first.item?.modified);
    await Promise.all([first.release(), second.release(), third.release()]);
  });

  test('a writer waits for every get handle, and reads never see a torn state', async () => {
    const subject = await open();
    const { cache } = subject;
    await cache.set('id', sample);
    const first = await cache.get('id');
    const second = await cache.get('id');
    const write = track(cache.set('id', other));
    const remove = track(cache.delete('other-item'));
    await remove.promise;
    expect(await isWaiting(subject, write)).toBe(true);
    await first.release();
    expect(await isWaiting(subject, write)).toBe(true);
    await second.release();
    await write.promise;
    expect(await valueOf(cache, 'id')).toEqual(stored(other));
  });

  test('get waits while a getset holds the item and then sees what it set', async () => {
    const subject = await open();
    const { cache } = subject;
    const gs = await cache.getset('id');
    const read = track(cache.get('id'));
    expect(await isWaiting(subject, read)).toBe(true);
    await gs.set(sample);
    expect(await isWaiting(subject, read)).toBe(true);
    await gs.release();
    await using got = await read.promise;
    expect(got.item === null).toBe(!features.stores);
    if (got.item) expect(await got.item.value()).toEqual(sample);
  });

  test('getset, set and delete exclude each other, in arrival order', async () => {
    const subject = await open();
    const { cache } = subject;
    const order: string[] = [];
    const first = await cache.getset('id');
    const second = track(cache.getset('id').then((h) => (order.push('getset'), h)));
    const write = track(cache.set('id', sample).then(() => order.push('set')));
    const remove = track(cache.delete('id').then(() => order.push('delete')));
    expect(await isWaiting(subject, second)).toBe(true);
    expect(write.settled || remove.settled).toBe(false);
    await first.release();
    const handle = await second.promise;
    expect(await isWaiting(subject, write)).toBe(true);
    expect(remove.settled).toBe(false);
    await handle.release();
    await Promise.all([write.promise, remove.promise]);
    expect(order).toEqual(['getset', 'set', 'delete']);
    expect(await valueOf(cache, 'id')).toBeUndefined();
  });

  test('a stream of readers does not starve a writer: later readers queue behind it', async () => {
    const subject = await open();
    const { cache } = subject;
    await cache.set('id', sample);
    const order: string[] = [];
    const reader = await cache.get('id');
    const writer = track(cache.getset('id').then((h) => (order.push('writer'), h)));
    const lateReader = track(cache.get('id').then((h) => (order.push('late reader'), h)));
    expect(await isWaiting(subject, writer)).toBe(true);
    expect(await isWaiting(subject, lateReader)).toBe(true);
    await reader.release();
    const held = await writer.promise;
    await held.set(other);
    expect(await isWaiting(subject, lateReader)).toBe(true);
    await held.release();
    await using late = await lateReader.promise;
    expect(order).toEqual(['writer', 'late reader']);
    if (features.stores) expect(await late.item!.value()).toEqual(other);
  });

  test('readers queued together behind a writer are granted together', async () => {
    const subject = await open();
    const { cache } = subject;
    const writer = await cache.getset('id');
    const readers = [track(cache.get('id')), track(cache.get('id')), track(cache.get('id'))];
    expect(await isWaiting(subject, readers[0]!)).toBe(true);
    await writer.release();
    const handles = await Promise.all(readers.map((r) => r.promise));
    await Promise.all(handles.map((h) => h.release()));
  });

  test('locks are per item and per scope', async () => {
    const { cache } = await open();
    const held = await cache.getset('id');
    expect(await isFree(cache, 'another')).toBe(true);
    expect(await isFree(cache.withScope('s'), 'id')).toBe(true);
    expect(await isFree(cache, 'id')).toBe(false);
    await held.release();
    expect(await isFree(cache, 'id')).toBe(true);
  });

  test('an aborted wait rejects with the reason and leaves nothing queued', async () => {
    const subject = await open();
    const { cache } = subject;
    const holder = await cache.getset('id');
    const controller = new AbortController();
    const waiting = track(cache.get('id', { signal: controller.signal }));
    const writerController = new AbortController();
    const writer = track(cache.getset('id', { signal: writerController.signal }));
    expect(await isWaiting(subject, waiting)).toBe(true);
    const reason = new Error('no longer needed');
    controller.abort(reason);
    writerController.abort('gave up');
    await expect(waiting.promise).rejects.toBe(reason);
    await expect(writer.promise).rejects.toBe('gave up');
    await holder.release();
    expect(await isFree(cache, 'id')).toBe(true);
  });

  test('an already aborted signal rejects at once with its reason, even when the lock is free, with or without wait', async () => {
    const { cache } = await open();
    const controller = new AbortController();
    const reason = new Error('too late');
    controller.abort(reason);
    const { signal } = controller;
    await expect(cache.get('id', { signal })).rejects.toBe(reason);
    await expect(cache.getset('id', { signal })).rejects.toBe(reason);
    await expect(cache.getset('id', { wait: false, signal })).rejects.toBe(reason);
    expect(await isFree(cache, 'id')).toBe(true);
    // And when the lock is taken: the abort, not a missed grant.
    const holder = await cache.getset('id');
    await expect(cache.getset('id', { wait: false, signal })).rejects.toBe(reason);
    await expect(cache.withScope('s').getset('id', { wait: false, signal: AbortSignal.abort('gone') })).rejects.toBe('gone');
    await holder.release();
    expect(await isFree(cache, 'id')).toBe(true);
  });

  test('get with wait: false gives null while the shared lock cannot be taken now, and queues nothing', async () => {
    const subject = await open();
    const { cache } = subject;
    await cache.set('id', sample);
    {
      // Free, and shared with another reader: a handle at once.
      await using reader = await cache.get('id', { wait: false });
      expect(reader).not.toBeNull();
      await using second = await cache.get('id', { wait: false });
      expect(second!.item === null).toBe(!features.stores);
    }
    const holder = await cache.getset('id');
    expect(await cache.get('id', { wait: false })).toBeNull();
    await holder.release();
    // A writer waiting behind a reader: a new reader would queue behind the writer, so it gets null too.
    const reader = await cache.get('id');
    const writer = track(cache.set('id', other));
    expect(await isWaiting(subject, writer)).toBe(true);
    expect(await cache.get('id', { wait: false })).toBeNull();
    await reader.release();
    await writer.promise;
    await using after = await cache.get('id', { wait: false });
    expect(after).not.toBeNull();
    if (features.stores) expect(await after!.item!.value()).toEqual(other);
    await expect((cache.get as (id: string, options: unknown) => Promise<unknown>)('id', { wait: 'no' })).rejects.toBeInstanceOf(TypeError);
  });

  test('aborting after the grant changes nothing', async () => {
    const { cache } = await open();
    const controller = new AbortController();
    const gs = await cache.getset('id', { signal: controller.signal });
    controller.abort();
    expect(await isFree(cache, 'id')).toBe(false);
    await gs.set(sample);
    await gs.release();
    expect(await valueOf(cache, 'id')).toEqual(stored(sample));
  });

  test('an aborted waiter between two others does not break the queue', async () => {
    const subject = await open();
    const { cache } = subject;
    const holder = await cache.getset('id');
    const controller = new AbortController();
    const middle = track(cache.getset('id', { signal: controller.signal }));
    const last = track(cache.getset('id'));
    controller.abort();
    await middle.promise.catch(() => {});
    expect(await isWaiting(subject, last)).toBe(true);
    await holder.release();
    await (await last.promise).release();
  });

  test('release is idempotent and never releases a later holder', async () => {
    const subject = await open();
    const { cache } = subject;
    const first = await cache.getset('id');
    const next = track(cache.getset('id'));
    await first.release();
    const second = await next.promise;
    await first.release();
    expect(await isFree(cache, 'id')).toBe(false);
    await second.release();
    await second.release();
    expect(await isFree(cache, 'id')).toBe(true);

    const reader = await cache.get('id');
    await reader.release();
    await reader.release();
    expect(await isFree(cache, 'id')).toBe(true);
  });

  test('a setter used after release rejects with CACHE_LOCK_NOT_HELD and writes nothing', async () => {
    const { cache } = await open();
    const gs = await cache.getset('id');
    await gs.set(sample);
    await gs.release();
    await expectCode(gs.set(other), 'CACHE_LOCK_NOT_HELD');
    expect(await valueOf(cache, 'id')).toEqual(stored(sample));
  });

  test('await using releases the lock at the end of the block', async () => {
    const { cache } = await open();
    {
      await using gs = await cache.getset('id');
      expect(await isFree(cache, 'id')).toBe(false);
      await gs.set(sample);
    }
    expect(await isFree(cache, 'id')).toBe(true);
    {
      await using got = await cache.get('id');
      expect(got.item === null).toBe(!features.stores);
      expect(await isFree(cache, 'id')).toBe(false);
    }
    expect(await isFree(cache, 'id')).toBe(true);
  });

  test('a setter called while release is under way refuses, so nothing is written outside the lock', async () => {
    const { cache } = await open();
    const gs = await cache.getset('id');
    await gs.set(sample);
    const releasing = gs.release();
    await expectCode(gs.set(other), 'CACHE_LOCK_NOT_HELD');
    await releasing;
    expect(await valueOf(cache, 'id')).toEqual(stored(sample));
  });

  test('release waits for a write through the setter that is still running', async () => {
    const { cache } = await open();
    const gs = await cache.getset('id');
    const write = gs.set(sample);
    await gs.release();
    await write;
    expect(await valueOf(cache, 'id')).toEqual(stored(sample));
  });

  test('concurrent getset callers compute a missing value once', async () => {
    const { cache } = await open();
    const computed: string[] = [];
    const ids = ['a', 'b', 'c', 'd', 'e'];
    const value = (id: string): unknown => (features.values === 'binary' ? new TextEncoder().encode(id) : id);
    await Promise.all(
      Array.from({ length: 40 }, async (_, n) => {
        const id = ids[n % ids.length]!;
        await using gs = await cache.getset(id);
        if (!gs.item) {
          computed.push(id);
          await gs.set(value(id));
        }
        return gs.item ? await gs.item.value() : undefined;
      }),
    );
    if (features.stores) expect([...computed].sort()).toEqual(ids);
    else expect(computed.length).toBe(40);
  });

  test('any interleaving of concurrent calls leaves every lock free and the last write in place', async () => {
    const { cache } = await open();
    const scoped = cache.withScope('s');
    const operations: Promise<unknown>[] = [];
    for (let n = 0; n < 60; n++) {
      const target = n % 2 ? cache : scoped;
      const id = `k${n % 3}`;
      switch (n % 5) {
        case 0:
          operations.push(target.set(id, sample));
          break;
        case 1:
          operations.push(target.get(id).then((h) => h.release()));
          break;
        case 2:
          operations.push(target.getset(id).then(async (h) => (await h.set(other), h.release())));
          break;
        case 3:
          operations.push(target.delete(id));
          break;
        default:
          operations.push(n % 10 === 4 ? scoped.clear() : target.getset(id, { wait: false }).then((h) => h.release()));
      }
    }
    await Promise.all(operations);
    for (const target of [cache, scoped]) {
      for (const id of ['k0', 'k1', 'k2']) expect(await isFree(target, id)).toBe(true);
    }
    await cache.set('last', sample);
    expect(await valueOf(cache, 'last')).toEqual(stored(sample));
  });
}
