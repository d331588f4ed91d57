import { expect, test } from 'vitest';
import type { Cache } from '../../src/index.js';
import { testWhen, clockNow, eventually, passTime, type Subject, type Suite, valueOf } from './support.js';

/** A time to live that stays fresh for the whole test, whatever the clock. */
const LONG_MS = 10 * 60_000;

/**
 * Expiry: an expired item reads as a miss, `getset` hands out a stale one while it is kept, `expires` says when;
 * removal is lazy (on access) and active. No test sleeps through a real TTL: an in-process cache gets a clock the
 * test moves; a remote one gets TTLs of a few milliseconds and the test waits for the real clock to pass them.
 */
export function expiry({ open, features }: Suite): void {
  const sample = features.values === 'binary' ? new Uint8Array([1, 2, 3]) : 'a value';
  const other = features.values === 'binary' ? new Uint8Array([4, 5]) : 'another value';
  /** A time to live the test lets pass: a minute on a controlled clock, 5 ms on the real one. */
  const shortMs = (subject: Subject): number => (subject.clock ? 60_000 : 5);

  /** Writes `id` with a TTL and returns the latest time it can expire at. */
  async function setExpiring(subject: Subject, cache: Cache<unknown>, id: string, ttlMs: number, staleMs?: number): Promise<number> {
    await cache.set(id, sample, staleMs === undefined ? { ttlMs } : { ttlMs, staleMs });
    return clockNow(subject) + ttlMs;
  }

  test('an item past its ttlMs reads as a miss in get, and getset gives its lock with no stale item', async () => {
    const subject = await open();
    const { cache } = subject;
    const expiresBy = await setExpiring(subject, cache, 'id', shortMs(subject));
    await passTime(subject, expiresBy);
    {
      await using got = await cache.get('id');
      expect(got.item).toBeNull();
    }
    {
      await using gs = await cache.getset('id');
      expect(gs.item).toBeNull();
      expect(gs.stale).toBeNull();
      await gs.set(other);
    }
    expect(await valueOf(cache, 'id')).toEqual(features.stores ? other : undefined);
  });

  testWhen(features.stores)('item.expires says when the item expires, null without ttlMs; modified keeps its meaning', async () => {
    const subject = await open();
    const { cache } = subject;
    const before = clockNow(subject);
    await cache.set('ttl', sample, { ttlMs: LONG_MS, modified: 1234.5 });
    const after = clockNow(subject);
    await cache.set('plain', sample, { modified: 1234.5 });
    {
      await using got = await cache.get('ttl');
      expect(got.item!.modified).toBe(1234.5);
      expect(got.item!.expires).toBeGreaterThanOrEqual((before + LONG_MS) / 1000);
      expect(got.item!.expires).toBeLessThanOrEqual((after + LONG_MS) / 1000);
      expect(await got.item!.value()).toEqual(sample);
    }
    await using plain = await cache.getset('plain');
    expect(plain.item!.expires).toBeNull();
    expect(plain.item!.modified).toBe(1234.5);
    expect(plain.stale).toBeNull();
  });

  testWhen(features.stores)('stale-if-error: getset on an expired item within staleMs hands it out as stale', async () => {
    const subject = await open();
    const { cache } = subject;
    const expiresBy = await setExpiring(subject, cache, 'id', shortMs(subject), LONG_MS);
    await passTime(subject, expiresBy);
    {
      await using got = await cache.get('id');
      expect(got.item).toBeNull();
    }
    {
      // The recomputation fails: the caller falls back to the stale value and writes nothing.
      await using gs = await cache.getset('id');
      expect(gs.item).toBeNull();
      expect(gs.stale).not.toBeNull();
      expect(await gs.stale!.value()).toEqual(sample);
      expect(gs.stale!.expires).toBeLessThanOrEqual(expiresBy / 1000);
    }
    {
      // Still kept for the next caller, who recomputes.
      await using gs = await cache.getset('id');
      expect(await gs.stale!.value()).toEqual(sample);
      await gs.set(other);
    }
    await using fresh = await cache.getset('id');
    expect(await fresh.item!.value()).toEqual(other);
    expect(fresh.stale).toBeNull();
  });

  test('past its staleMs an item gives no stale item either', async () => {
    const subject = await open();
    const { cache } = subject;
    const ttlMs = shortMs(subject);
    const expiresBy = await setExpiring(subject, cache, 'id', ttlMs, ttlMs);
    await passTime(subject, expiresBy + ttlMs);
    await using gs = await cache.getset('id');
    expect(gs.item).toBeNull();
    expect(gs.stale).toBeNull();
  });

  test('a getset handle writes with ttlMs and staleMs', async () => {
    const subject = await open();
    const { cache } = subject;
    {
      await using gs = await cache.getset('long');
      await gs.set(sample, { ttlMs: LONG_MS });
    }
    {
      await using got = await cache.get('long');
      expect(got.item?.expires ?? null).toEqual(features.stores ? expect.any(Number) : null);
    }
    const ttlMs = shortMs(subject);
    {
      await using gs = await cache.getset('short');
      await gs.set(sample, { ttlMs, staleMs: LONG_MS });
    }
    await passTime(subject, clockNow(subject) + ttlMs);
    {
      await using got = await cache.get('short');
      expect(got.item).toBeNull();
    }
    await using gs = await cache.getset('short');
    expect(gs.stale === null).toBe(!features.stores);
  });

  testWhen(features.stores)('a write without ttlMs replaces an expiring item with one that never expires', async () => {
    const subject = await open();
    const { cache } = subject;
    const expiresBy = await setExpiring(subject, cache, 'id', shortMs(subject));
    await cache.set('id', other);
    await passTime(subject, expiresBy);
    await using got = await cache.get('id');
    expect(got.item!.expires).toBeNull();
    expect(await got.item!.value()).toEqual(other);
  });

  testWhen(features.stores && features.countsExpirations === true)('an item read past its expiry is removed soon after (lazily, on access)', async () => {
    const subject = await open();
    const { cache } = subject;
    const expiresBy = await setExpiring(subject, cache, 'id', shortMs(subject));
    await cache.set('kept', sample);
    expect(await subject.expirations!()).toBe(0);
    await passTime(subject, expiresBy);
    await cache.get('id').then((got) => got.release());
    await eventually(async () => (await subject.expirations!()) === 1, 'the expired item removed after a read');
    expect(await valueOf(cache, 'kept')).toEqual(sample);
  });

  test('bad ttlMs and staleMs are TypeErrors, in set and in a getset handle', async () => {
    const { cache } = await open();
    const bad: unknown[] = [
      { ttlMs: 0 },
      { ttlMs: -1 },
      { ttlMs: Number.NaN },
      { ttlMs: Infinity },
      { ttlMs: '5' },
      { ttlMs: null },
      { ttlMs: 5, staleMs: -1 },
      { ttlMs: 5, staleMs: Number.NaN },
      { ttlMs: 5, staleMs: Infinity },
      { ttlMs: 5, staleMs: '1' },
      { staleMs: 5 },
    ];
    const loose = cache as unknown as { set(id: string, value: unknown, options: unknown): Promise<void> };
    for (const options of bad) await expect(loose.set('id', sample, options), JSON.stringify(options)).rejects.toBeInstanceOf(TypeError);
    await using gs = await cache.getset('id');
    const setter = gs.set as unknown as (value: unknown, options: unknown) => Promise<void>;
    for (const options of bad) await expect(setter(sample, options), JSON.stringify(options)).rejects.toBeInstanceOf(TypeError);
    // A refused write wrote nothing, and the handle still writes.
    await gs.set(sample, { ttlMs: LONG_MS, staleMs: 0 });
  });
}
