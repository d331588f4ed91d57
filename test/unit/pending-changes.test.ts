import { readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { expect, test } from 'vitest';
import { PendingChanges } from '../../daemon/pending-changes.js';
import { itemKey, scopeOf } from '../../src/scope-path.js';
import { tempDir } from '../support/temp-dir.js';

/** The changes Redis did not take, as a daemon keeps them: order, bound, and the file that outlives a restart. */

const key = (path: string[], id: string): string => itemKey(scopeOf(path), id);

function pending(path: string, maxChanges?: number): PendingChanges {
  return new PendingChanges({ path, keyPrefix: 'hoard', ...(maxChanges === undefined ? {} : { maxChanges }), log: () => {} });
}

test('a clear forgets the keys and clears under it, and is written through before the keys recorded after it', async () => {
  const changes = pending(join(await tempDir(), 'p.json'));
  changes.addKey('a', key(['a', 'b'], 'k1'));
  changes.addKey('a', key(['a'], 'k2'));
  changes.addClear('a', scopeOf(['a', 'b', 'c']).prefix);
  changes.addClear('a', scopeOf(['a', 'b']).prefix);
  // Nested in a clear already waiting: nothing new.
  changes.addClear('a', scopeOf(['a', 'b', 'd']).prefix);
  changes.addKey('a', key(['a', 'b'], 'k3'));
  expect(changes.size).toBe(3);
  const taken = changes.take('a')!;
  expect([...taken.clears]).toEqual([scopeOf(['a', 'b']).prefix]);
  expect([...taken.keys]).toEqual([key(['a'], 'k2'), key(['a', 'b'], 'k3')]);
  // Counted until written through.
  expect(changes.size).toBe(3);
  changes.finish();
  expect(changes.size).toBe(0);
  expect(changes.has('a')).toBe(false);
});

test('what a write-through left is put back before what came meanwhile, and a later clear still covers it', async () => {
  const changes = pending(join(await tempDir(), 'p.json'));
  changes.addClear('a', scopeOf(['a', 'x']).prefix);
  changes.addKey('a', key(['a', 'y'], 'k1'));
  const taken = changes.take('a')!;
  changes.addClear('a', scopeOf(['a', 'y']).prefix);
  changes.restore(taken);
  const again = changes.take('a')!;
  expect([...again.clears]).toEqual([scopeOf(['a', 'x']).prefix, scopeOf(['a', 'y']).prefix]);
  expect([...again.keys]).toEqual([]);
});

test('past the bound, the top-level scope holding the most goes whole; a clear of the root forgets everything', async () => {
  const changes = pending(join(await tempDir(), 'p.json'), 4);
  changes.addKey('small', key(['small'], 's'));
  for (let n = 0; n < 4; n++) changes.addKey('big', key(['big'], `k${n}`));
  // 5 > 4: `big` (4 keys) goes whole; `small` keeps its key.
  expect(changes.size).toBe(2);
  expect(changes.take('big')).toMatchObject({ whole: true, keys: new Set(), clears: new Set() });
  changes.finish();
  expect([...changes.take('small')!.keys]).toEqual([key(['small'], 's')]);
  changes.finish();
  changes.addKey('a', key(['a'], 'k'));
  changes.addRootClear();
  expect(changes.size).toBe(1);
  expect(changes.tops()).toEqual([]);
  expect(changes.has('anything')).toBe(true);
});

test('kept in a 0600 file that a new run reads; a file of another prefix, or not JSON, is ignored', async () => {
  const dir = await tempDir();
  const path = join(dir, 'tier-pending.json');
  const first = pending(path, 3);
  first.addKey('a', key(['a'], 'k1'));
  first.addClear('b', scopeOf(['b', 'c']).prefix);
  // The fourth change: `c`, holding the most (2), goes whole.
  for (let n = 0; n < 3; n++) first.addKey('c', key(['c'], `k${n}`));
  expect(first.size).toBe(3);
  // Concurrent saves share the file writes: each resolves once what came before it is on disk.
  await Promise.all([first.save(), first.save(), first.save()]);
  expect((await stat(path)).mode & 0o777).toBe(0o600);
  // Being written through is not written through yet: a file written meanwhile still holds it.
  first.take('b');
  await first.save();
  const second = pending(path, 3);
  await second.load();
  expect(second.size).toBe(first.size);
  expect(second.take('c')).toMatchObject({ whole: true });
  expect([...second.take('b')!.clears]).toEqual([scopeOf(['b', 'c']).prefix]);

  const other = new PendingChanges({ path, keyPrefix: 'other', log: () => {} });
  await other.load();
  expect(other.size).toBe(0);
  await writeFile(path, 'not json');
  const lines: string[] = [];
  const broken = new PendingChanges({ path, keyPrefix: 'hoard', log: (line) => lines.push(line) });
  await broken.load();
  expect(broken.size).toBe(0);
  expect(lines).toHaveLength(1);
  expect(await readFile(path, 'utf8')).toBe('not json');
});

test("a getset's write keeps its lease's fence: a later fenced one replaces it, a later plain change or a clear forgets it; kept in the file", async () => {
  const dir = await tempDir();
  const path = join(dir, 'tier-pending.json');
  const changes = pending(path);
  changes.addKey('a', key(['a'], 'replaced'), 7);
  changes.addKey('a', key(['a'], 'replaced'), 9);
  changes.addKey('a', key(['a'], 'plain later'), 8);
  changes.addKey('a', key(['a'], 'plain later'));
  changes.addKey('a', key(['a'], 'fenced'), 11);
  changes.addKey('a', key(['a', 'b'], 'cleared'), 12);
  changes.addClear('a', scopeOf(['a', 'b']).prefix);
  changes.addKey('a', key(['a', 'b'], 'cleared'));
  expect(changes.size).toBe(5);
  await changes.save();
  expect((await stat(path)).mode & 0o777).toBe(0o600);

  const again = pending(path);
  await again.load();
  const taken = again.take('a')!;
  const fences = Object.fromEntries(taken.fences);
  expect(fences).toEqual({ [key(['a'], 'replaced')]: 9, [key(['a'], 'fenced')]: 11 });
  // Put back before a later plain change of `fenced`, which forgets its fence; `replaced` keeps it.
  again.addKey('a', key(['a'], 'fenced'));
  again.restore(taken);
  expect(Object.fromEntries(again.take('a')!.fences)).toEqual({ [key(['a'], 'replaced')]: 9 });
});

test('a file without fences (an earlier build) loads every key as plain; a bad fence is read as none', async () => {
  const path = join(await tempDir(), 'tier-pending.json');
  await writeFile(path, JSON.stringify({ keyPrefix: 'hoard', rootClear: false, tops: [{ top: 'a', whole: false, clears: [], keys: [key(['a'], 'k1')] }] }));
  const old = pending(path);
  await old.load();
  expect(old.size).toBe(1);
  expect(old.take('a')!.fences.size).toBe(0);
  const bad = { [key(['a'], 'k1')]: 'x', [key(['a'], 'k2')]: -1, [key(['a'], 'k3')]: 3 };
  await writeFile(path, JSON.stringify({ keyPrefix: 'hoard', rootClear: false, tops: [{ top: 'a', whole: false, clears: [], keys: [key(['a'], 'k1'), key(['a'], 'k2'), key(['a'], 'k3')], fences: bad }] }));
  const loaded = pending(path);
  await loaded.load();
  expect(Object.fromEntries(loaded.take('a')!.fences)).toEqual({ [key(['a'], 'k3')]: 3 });
});

test('holds and covers: which items wait, also while being written through, and which a waiting clear would undo; adds say whether anything changed', async () => {
  const changes = pending(join(await tempDir(), 'p.json'));
  expect(changes.addKey('a', key(['a'], 'k1'))).toBe(true);
  // The same key again, plain: nothing changed, so nothing to write to the file.
  expect(changes.addKey('a', key(['a'], 'k1'))).toBe(false);
  expect(changes.addKey('a', key(['a'], 'k1'), 7)).toBe(true);
  expect(changes.addClear('a', scopeOf(['a', 'b']).prefix)).toBe(true);
  expect(changes.addClear('a', scopeOf(['a', 'b', 'c']).prefix)).toBe(false);
  expect(changes.holds('a', key(['a'], 'k1'))).toBe(true);
  expect(changes.holds('a', key(['a'], 'k2'))).toBe(false);
  expect(changes.holds('z', key(['z'], 'k1'))).toBe(false);
  expect(changes.covers('a', key(['a', 'b'], 'k'))).toBe(true);
  expect(changes.covers('a', key(['a'], 'k'))).toBe(false);
  // Taken for writing through: still held and covering until finished.
  changes.take('a');
  expect(changes.holds('a', key(['a'], 'k1'))).toBe(true);
  expect(changes.covers('a', key(['a', 'b'], 'k'))).toBe(true);
  changes.finish();
  expect(changes.holds('a', key(['a'], 'k1'))).toBe(false);
  expect(changes.covers('a', key(['a', 'b'], 'k'))).toBe(false);
  // A root clear covers everything; a whole scope holds every item of it.
  changes.addRootClear();
  expect(changes.covers('q', key(['q'], 'k'))).toBe(true);
  const bounded = pending(join(await tempDir(), 'p.json'), 1);
  bounded.addKey('w', key(['w'], 'k1'));
  bounded.addKey('w', key(['w'], 'k2'));
  expect(bounded.holds('w', key(['w'], 'anything'))).toBe(true);
  expect(bounded.addKey('w', key(['w'], 'k3'))).toBe(false);
});

test('forgetKey: a write Redis took forgets the waiting change of the item and its fence, whether it waits or is being written through', async () => {
  const path = join(await tempDir(), 'tier-pending.json');
  const changes = pending(path);
  changes.addKey('a', key(['a'], 'k1'), 7);
  changes.addKey('a', key(['a'], 'k2'));
  expect(changes.forgetKey('a', key(['a'], 'k1'))).toBe(true);
  expect(changes.forgetKey('a', key(['a'], 'k1'))).toBe(false);
  expect(changes.holds('a', key(['a'], 'k1'))).toBe(false);
  expect(changes.size).toBe(1);
  const taken = changes.take('a')!;
  expect(taken.fences.size).toBe(0);
  // Being written through: the write-through finds it gone, and skips it.
  expect(changes.forgetKey('a', key(['a'], 'k2'))).toBe(true);
  expect(taken.keys.size).toBe(0);
  expect(changes.holds('a', key(['a'], 'k2'))).toBe(false);
  expect(changes.size).toBe(0);
  changes.finish();
  changes.addKey('b', key(['b'], 'k'));
  expect(changes.forgetKey('b', key(['b'], 'k'))).toBe(true);
  expect(changes.tops()).toEqual([]);
  expect(changes.has('b')).toBe(false);
  await changes.save();
  expect(JSON.parse(await readFile(path, 'utf8'))).toMatchObject({ tops: [] });
});

test('a whole scope whose clear went to Redis: the fence it stands at is kept in the file; changes recorded after it are kept as keys; going whole again needs a new clear', async () => {
  const path = join(await tempDir(), 'tier-pending.json');
  const changes = pending(path, 2);
  for (let n = 0; n < 3; n++) changes.addKey('w', key(['w'], `k${n}`));
  const taken = changes.take('w')!;
  expect(taken).toMatchObject({ whole: true, clearedAt: undefined });
  expect(changes.covers('w', key(['w'], 'k'))).toBe(true);
  taken.clearedAt = 42;
  // A write Redis takes now is not undone by a clear: that went already.
  expect(changes.covers('w', key(['w'], 'k'))).toBe(false);
  expect(changes.holds('w', key(['w'], 'k'))).toBe(true);
  await changes.save();
  const again = pending(path, 2);
  await again.load();
  expect(again.take('w')).toMatchObject({ whole: true, clearedAt: 42 });
  // Recorded while the scope is written through, then put back after it: the delete of `later` must reach Redis.
  changes.addKey('w', key(['w'], 'later'));
  changes.restore(taken);
  const back = changes.take('w')!;
  expect(back).toMatchObject({ whole: true, clearedAt: 42 });
  expect([...back.keys]).toEqual([key(['w'], 'later')]);
  changes.restore(back);
  // Past the bound again (3 keys > 2): the scope goes whole again, and needs a new clear.
  changes.addKey('w', key(['w'], 'k8'));
  changes.addKey('w', key(['w'], 'k9'));
  expect(changes.take('w')).toMatchObject({ whole: true, clearedAt: undefined, keys: new Set() });
});

test("a file of an earlier build whose whole scope's clear went (`cleared: true`, no fence kept) loads as cleared at 0: not cleared again", async () => {
  const path = join(await tempDir(), 'tier-pending.json');
  await writeFile(path, JSON.stringify({ keyPrefix: 'hoard', rootClear: false, tops: [{ top: 'w', whole: true, cleared: true, clears: [], keys: [key(['w'], 'k')] }] }));
  const changes = pending(path);
  await changes.load();
  expect(changes.covers('w', key(['w'], 'x'))).toBe(false);
  expect(changes.take('w')).toMatchObject({ whole: true, clearedAt: 0, keys: new Set([key(['w'], 'k')]) });
});

test('keyFence: how a key waiting on its own goes when written through apart from a pass, and when its scope\'s pass comes first', async () => {
  const changes = pending(join(await tempDir(), 'p.json'));
  changes.addKey('a', key(['a'], 'plain'));
  changes.addKey('a', key(['a'], 'leased'), 7);
  expect([changes.keyFence('a', key(['a'], 'plain')), changes.keyFence('a', key(['a'], 'leased')), changes.keyFence('a', key(['a'], 'none'))]).toEqual(['plain', 7, undefined]);
  // A clear still to be written through covers what was recorded after it: its pass sends the clear first.
  changes.addClear('a', 'a/b/');
  changes.addKey('a', key(['a', 'b'], 'after'));
  expect(changes.keyFence('a', key(['a', 'b'], 'after'))).toBeUndefined();
  expect(changes.waitsAsKey('a', key(['a', 'b'], 'after'))).toBe(true);
  // Being written through now (taken) counts too; a whole scope's keys wait for its pass.
  const taken = changes.take('a')!;
  expect(changes.keyFence('a', key(['a'], 'leased'))).toBe(7);
  changes.restore(taken);
  const whole = pending(join(await tempDir(), 'w.json'), 1);
  whole.addKey('w', key(['w'], 'k0'));
  whole.addKey('w', key(['w'], 'k1'));
  const wholeTop = whole.take('w')!;
  wholeTop.clearedAt = 5;
  whole.restore(wholeTop);
  whole.addKey('w', key(['w'], 'k2'));
  expect([whole.waitsAsKey('w', key(['w'], 'k2')), whole.keyFence('w', key(['w'], 'k2'))]).toEqual([true, undefined]);
});

test('settled: a clear that Redis took forgets what waits under it, also in the scope being written through now', async () => {
  const changes = pending(join(await tempDir(), 'p.json'));
  changes.addKey('a', key(['a', 'b'], 'x'));
  changes.addKey('a', key(['a'], 'y'));
  changes.addClear('a', scopeOf(['a', 'b', 'c']).prefix);
  const taken = changes.take('a')!;
  changes.addKey('a', key(['a', 'b'], 'z'));
  changes.settled('a', scopeOf(['a', 'b']).prefix);
  // Before the fix, the write-through under way still held x and the clear of a/b/c: it would send x as a delete.
  expect([...taken.keys]).toEqual([key(['a'], 'y')]);
  expect([...taken.clears]).toEqual([]);
  expect(changes.holds('a', key(['a', 'b'], 'x'))).toBe(false);
  expect(changes.holds('a', key(['a', 'b'], 'z'))).toBe(false);
  expect(changes.size).toBe(1);
  changes.finish();
  expect(changes.size).toBe(0);
});

test('a file whose keys are no item keys of their scope, or whose clears are no prefixes in it, loads without them', async () => {
  const path = join(await tempDir(), 'p.json');
  const good = key(['a'], 'k');
  const file = { keyPrefix: 'hoard', rootClear: false, tops: [{ top: 'a', whole: false, clears: ['b/', 'nonsense', scopeOf(['a', 'c']).prefix], keys: ['garbage', key(['b'], 'k'), good, 7] }] };
  await writeFile(path, JSON.stringify(file));
  const changes = pending(path);
  await changes.load();
  // Before the fix, every string loaded: 6 changes, and the write-through of `garbage` threw a TypeError forever.
  expect(changes.size).toBe(2);
  const taken = changes.take('a')!;
  expect([...taken.keys]).toEqual([good]);
  expect([...taken.clears]).toEqual([scopeOf(['a', 'c']).prefix]);
});

test("checkIdentity: another tier identity resets every fence to 0 and every whole scope's clearedAt to 'lost', also in the write-through under way; kept in the file", async () => {
  const path = join(await tempDir(), 'p.json');
  const changes = pending(path);
  // The first identity known is adopted as it is (a file of an earlier build kept none): nothing reset.
  expect(changes.checkIdentity('one')).toBe(true);
  expect(changes.checkIdentity('one')).toBe(false);
  changes.addKey('a', key(['a'], 'fenced'), 17);
  changes.addKey('a', key(['a'], 'plain'));
  changes.addKey('w', key(['w'], 'k'), 40);
  const taken = changes.take('w')!;
  taken.whole = true;
  taken.clearedAt = 42;
  await changes.save();
  const again = pending(path);
  await again.load();
  expect(again.identity).toBe('one');
  // Unknown on either side (an ACL): nothing reset.
  expect(changes.checkIdentity(null)).toBe(true);
  expect(changes.checkIdentity('one')).toBe(true);
  expect(taken).toMatchObject({ clearedAt: 42, fences: new Map([[key(['w'], 'k'), 40]]) });
  expect(changes.checkIdentity('two')).toBe(true);
  expect(taken).toMatchObject({ clearedAt: 'lost', fences: new Map([[key(['w'], 'k'), 0]]) });
  await changes.save();
  const reread = pending(path);
  await reread.load();
  expect(reread.identity).toBe('two');
  expect(reread.take('w')).toMatchObject({ whole: true, clearedAt: 'lost', fences: new Map([[key(['w'], 'k'), 0]]) });
  reread.finish();
  expect(reread.take('a')?.fences).toEqual(new Map([[key(['a'], 'fenced'), 0]]));
});

test('holds: the keys that wait, every key of a scope remembered whole while its pass is under way but those it wrote through already', async () => {
  const changes = pending(join(await tempDir(), 'tier-pending.json'), 1);
  changes.addKey('a', 'a/:x');
  changes.addKey('a', 'a/:y');
  changes.addKey('b', 'b/:z');
  expect(['a/:x', 'a/:never-written', 'b/:z', 'b/:other'].map((key) => changes.holds(key.slice(0, 1), key))).toEqual([true, true, true, false]);
  changes.forgetKey('b', 'b/:z');
  const taken = changes.take('a')!;
  expect([changes.holds('a', 'a/:never-written'), changes.holds('b', 'b/:z')]).toEqual([true, false]);
  // Written through by the pass: evicting it now gives nothing up (before, it was still held, and its eviction counted
  // and logged as a value Redis would not have).
  (taken.written ??= new Set()).add('a/:x');
  expect([changes.holds('a', 'a/:x'), changes.holds('a', 'a/:y')]).toEqual([false, true]);
  changes.finish();
  expect(changes.holds('a', 'a/:x')).toBe(false);
});
