import { expect, onTestFinished, test } from 'vitest';
import { Housekeeper } from '../src/housekeeper.js';
import { LevelStore } from '../src/level/level-store.js';
import { LockTable } from '../src/lock-table.js';
import { itemKey, scopeOf } from '../src/scope-path.js';
import type { EncodedValue } from '../src/store.js';
import { tempDir } from './support/temp-dir.js';

/**
 * Eviction of pinned items (changes a shared tier has yet to write through) on a real LevelStore, given as the tier
 * gives them: passed over, whatever their place in the recency order, and evicted only when the other items cannot
 * bring the store down to its target; then the least recently used of them, only as many as that needs, and a dry run
 * says the same.
 */
const PAGES = scopeOf(['pages']);
const value = (size: number): EncodedValue => ({ encoding: 'raw', bytes: new Uint8Array(size) });

async function openStore(maxSizeBytes: number): Promise<LevelStore> {
  const store = await LevelStore.open(await tempDir('hr23-'), { maxSizeBytes, recencyBucketMs: 1 });
  onTestFinished(() => store.close().catch(() => {}));
  return store;
}

/** The counted size S of one item (all items here have ids of one length and 1000-byte values). */
async function itemSize(): Promise<number> {
  const probe = await openStore(1e9);
  await probe.write(PAGES, 'p0', { modified: 0, value: value(1000) });
  return probe.sizeOf(itemKey(PAGES, 'p0'))!;
}

/** A store of limit 10 S (empty: a Housekeeper made now starts no pass) and what fills it with `ids` in that order. */
async function emptyStore(): Promise<{ store: LevelStore; size: number }> {
  const size = await itemSize();
  return { store: await openStore(10 * size), size };
}

/** Writes `ids` in that order (least recent first) straight to the store, telling no Housekeeper. */
async function fill(store: LevelStore, ids: string[]): Promise<void> {
  for (const id of ids) {
    await store.write(PAGES, id, { modified: 0, value: value(1000) });
    await new Promise((resolve) => setTimeout(resolve, 3));
  }
}

function housekeeper(store: LevelStore, pinned: Set<string>, now: () => number = Date.now): { keeper: Housekeeper; evictedPinned: string[] } {
  const evictedPinned: string[] = [];
  const keeper = new Housekeeper(store, new LockTable(), now, { sweepIntervalMs: Infinity, pinned: (key) => pinned.has(key), pinnedEvicted: (key) => evictedPinned.push(key) });
  onTestFinished(() => keeper.close());
  return { keeper, evictedPinned };
}

const keysOf = (ids: readonly string[]): Set<string> => new Set(ids.map((id) => itemKey(PAGES, id)));
const PINNED = ['p0', 'p1', 'p2', 'p3', 'p4', 'p5', 'p6', 'p7', 'p8', 'p9'];
const UNPINNED = ['u0', 'u1'];

test('pinned items least recent and more than the target: the others go first, then as few pinned ones as the target needs, and a dry run says what the pass does', async () => {
  const { store, size } = await emptyStore();
  const { keeper, evictedPinned } = housekeeper(store, keysOf(PINNED));
  // 12 S in a store of 10 S: the two others bring it to 10 S, the target is 9 S.
  await fill(store, [...PINNED, ...UNPINNED]);
  const dry = await keeper.gc({ dryRun: true });
  const real = await keeper.gc({ dryRun: false });
  const left = [...PINNED, ...UNPINNED].filter((id) => store.read(PAGES, id) !== undefined);
  expect([dry.evictedItems, dry.sizeBytes! / size]).toEqual([real.evictedItems, real.sizeBytes! / size]);
  expect([real.evictedItems, real.sizeBytes! / size]).toEqual([3, 9]);
  expect(evictedPinned).toEqual([itemKey(PAGES, 'p0')]);
  expect(left).toEqual(PINNED.slice(1));
});

test('pinned items most recent, the store at its target once the others are gone: no pinned item goes', async () => {
  const { store, size } = await emptyStore();
  const pinned = PINNED.slice(0, 9);
  const { keeper, evictedPinned } = housekeeper(store, keysOf(pinned));
  await fill(store, [...UNPINNED, ...pinned]);
  const dry = await keeper.gc({ dryRun: true });
  const real = await keeper.gc({ dryRun: false });
  // Before (pinned items kept to half of the limit), four of them went as well, and their changes with them.
  expect([dry.evictedItems, real.evictedItems, real.sizeBytes! / size]).toEqual([2, 2, 9]);
  expect(evictedPinned).toEqual([]);
  expect(pinned.filter((id) => store.read(PAGES, id) !== undefined)).toEqual(pinned);
});

test('gc with the store under its target evicts nothing, pinned items included, however much of the limit they hold', async () => {
  const { store } = await emptyStore();
  const pinned = PINNED.slice(0, 6);
  const { keeper, evictedPinned } = housekeeper(store, keysOf(pinned));
  await fill(store, pinned);
  const dry = await keeper.gc({ dryRun: true });
  const real = await keeper.gc({ dryRun: false });
  // Before: one went (six items of the limit's ten trimmed to half), though the store was at 60% of its limit.
  expect([dry.evictedItems, real.evictedItems, evictedPinned]).toEqual([0, 0, []]);
});

test('a dry run counts pinned items that have expired as the pass does: removed as expired first, not evicted again', async () => {
  const { store, size } = await emptyStore();
  // The clock a minute ahead: the first three pinned items, expiring in a second, are past their time.
  const { keeper } = housekeeper(store, keysOf(PINNED), () => Date.now() + 60_000);
  for (const [at, id] of [...PINNED, 'u0', 'u1'].entries()) {
    await store.write(PAGES, id, { modified: 0, value: value(1000), ...(at < 3 ? { expiresAtMs: Date.now() + 1000 } : {}) });
    await new Promise((resolve) => setTimeout(resolve, 3));
  }
  const dry = await keeper.gc({ dryRun: true });
  const real = await keeper.gc({ dryRun: false });
  expect([dry.expiredItems, dry.evictedItems, dry.sizeBytes! / size]).toEqual([real.expiredItems, real.evictedItems, real.sizeBytes! / size]);
  expect([real.expiredItems, real.evictedItems]).toEqual([3, 0]);
});
