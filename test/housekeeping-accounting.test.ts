import { describe, expect, onTestFinished, test } from 'vitest';
import { LevelStore } from '../src/level/level-store.js';
import { LocalBackend } from '../src/local-backend.js';
import { itemKey, parseItemKey, ROOT_SCOPE, scopeOf } from '../src/scope-path.js';
import type { EncodedValue, Store } from '../src/store.js';
import { eventually } from './conformance/support.js';
import { tempDir } from './support/temp-dir.js';

const keepBytes = { encode: (value: EncodedValue) => value, decode: (value: EncodedValue) => value };
const value = (size: number): EncodedValue => ({ encoding: 'raw', bytes: new Uint8Array(size) });

async function openStore(maxSizeBytes: number): Promise<LevelStore> {
  const store = await LevelStore.open(await tempDir('hka-'), { maxSizeBytes });
  onTestFinished(() => store.close().catch(() => {}));
  return store;
}

/**
 * The real store behind a Proxy that counts the calls of each of its methods (nothing else changes: every call
 * reaches the store), and lets a test run something after a method's answer, before the caller sees it.
 */
function observed(store: LevelStore, after: { [method: string]: (result: unknown) => Promise<unknown> | unknown } = {}) {
  const calls = new Map<string, number>();
  const proxy = new Proxy(store, {
    get(target, name, receiver) {
      const member = Reflect.get(target, name, receiver);
      if (typeof member !== 'function' || typeof name !== 'string') return member;
      return (...args: unknown[]) => {
        calls.set(name, (calls.get(name) ?? 0) + 1);
        const result = member.apply(target, args);
        const then = after[name];
        return then ? Promise.resolve(result).then(then) : result;
      };
    },
  }) as Store<EncodedValue>;
  return { proxy, calls };
}

describe('the housekeeper on the write path', () => {
  test('writes into a store of 10,000 top-level scopes never ask for the per-scope usage', async () => {
    const store = await openStore(1e9);
    for (let n = 0; n < 10_000; n += 500) {
      await Promise.all(Array.from({ length: 500 }, (_, k) => store.write(scopeOf([`s${n + k}`]), 'x', { modified: 0, value: value(10) })));
    }
    const { proxy, calls } = observed(store);
    const backend = new LocalBackend<EncodedValue, EncodedValue>(proxy, keepBytes);
    calls.clear();
    await Promise.all(Array.from({ length: 1000 }, (_, n) => backend.set(scopeOf([`s${n}`]), 'y', value(10), { modified: 0 })));
    expect(calls.get('write')).toBe(1000);
    expect(calls.get('usage') ?? 0).toBe(0);
    expect(store.usage().scopes.size).toBe(10_000);
  });
});

describe('the housekeeper counts only what it removed', () => {
  test('an item deleted by a user between the store listing it and the eviction locking it is not counted as evicted', async () => {
    const limitBytes = 100_000;
    const store = await openStore(limitBytes);
    let backend!: LocalBackend<EncodedValue, EncodedValue>;
    let deletedByUser: string | undefined;
    const { proxy } = observed(store, {
      // The user's delete lands after the listing, before the eviction takes the first key's lock.
      leastRecent: async (result) => {
        const { keys } = result as { keys: string[] };
        if (deletedByUser === undefined && keys.length > 0) {
          deletedByUser = keys[0]!;
          const { scope, id } = parseItemKey(deletedByUser);
          await backend.delete(scope, id);
        }
        return result;
      },
    });
    backend = new LocalBackend<EncodedValue, EncodedValue>(proxy, keepBytes, { sweepIntervalMs: 1e9 });
    onTestFinished(() => backend.close());
    const ids = Array.from({ length: 150 }, (_, n) => `k${String(n).padStart(4, '0')}`);
    for (const id of ids) await backend.set(ROOT_SCOPE, id, value(1000), { modified: 0 });
    await backend.gc({ dryRun: false });
    expect(deletedByUser).toBeDefined();
    const left = ids.filter((id) => store.sizeOf(itemKey(ROOT_SCOPE, id)) !== undefined).length;
    const removed = ids.length - left - 1;
    expect(removed).toBeGreaterThan(0);
    const counters = backend.counters();
    expect(counters.evictedItems).toBe(removed);
    expect(counters.scopes.get('')?.evictedItems).toBe(removed);
  });

  test('a pass over listed items that are all gone ends: gc resolves, counting nothing', async () => {
    const store = await openStore(1e9);
    // The store lists one key that has no item (a stray index entry, as a damaged index gives), however often asked.
    const stray = itemKey(ROOT_SCOPE, 'gone');
    const { proxy, calls } = observed(store, { expired: (keys) => [...(keys as string[]), stray] });
    const backend = new LocalBackend<EncodedValue, EncodedValue>(proxy, keepBytes, { sweepIntervalMs: 1e9 });
    onTestFinished(() => backend.close());
    await backend.set(ROOT_SCOPE, 'kept', value(100), { modified: 0 });
    let settled = false;
    const gc = backend.gc({ dryRun: false }).finally(() => (settled = true));
    await eventually(() => settled || (calls.get('expired') ?? 0) > 100, 'gc to resolve, or the sweep to ask 100 times');
    expect(calls.get('expired')).toBeLessThanOrEqual(2);
    const report = await gc;
    expect(report).toMatchObject({ expiredItems: 0, expiredBytes: 0, evictedItems: 0 });
    expect(backend.counters().expiredItems).toBe(0);
  });
});
