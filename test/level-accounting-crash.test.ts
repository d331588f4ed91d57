import { join } from 'node:path';
import { expect, test } from 'vitest';
import { LevelStore, verifyDirectory } from '../src/level/level-store.js';
import { PROJECT_ROOT } from './support/child.js';
import { startModule } from './support/processes.js';
import { tempDir } from './support/temp-dir.js';

const STORE_MODULE = JSON.stringify(join(PROJECT_ROOT, 'dist/src/level/level-store.js'));
const SCOPE_MODULE = JSON.stringify(join(PROJECT_ROOT, 'dist/src/scope-path.js'));

/**
 * Writes, replaces, deletes and clears small and large values, with and without expiry, many at once, until killed;
 * prints `writing` once the first writes are done, so the kill lands among writes.
 */
const WRITER = `
import { LevelStore } from ${STORE_MODULE};
import { scopeOf } from ${SCOPE_MODULE};
const [dir, seed] = process.argv.slice(-2);
const store = await LevelStore.open(dir, { maxSizeBytes: Infinity });
let n = Number(seed) * 1000;
const value = (k) => {
  const bytes = new Uint8Array(k % 4 === 0 ? 40_000 + (k % 7) * 1000 : 10 + (k % 300)).fill(k & 0xff);
  const record = { modified: k, value: { encoding: 'binary', bytes } };
  return k % 3 === 0 ? { ...record, expiresAtMs: 1e12 + k, staleUntilMs: 1e12 + 2 * k } : record;
};
let announced = false;
for (;;) {
  const writes = [];
  for (let j = 0; j < 16; j++, n++) {
    const scope = scopeOf(['s' + (n % 5), 'd' + (n % 3)]);
    const id = 'k' + ((n * 31) % 97);
    if (n % 11 === 0) writes.push(store.delete(scope, id));
    else writes.push(store.write(scope, id, value(n)));
  }
  // Each item is written once per round (distinct ids), as callers holding its lock would.
  await Promise.all(writes);
  if (n % 160 === 0) await store.clear(scopeOf(['s' + (n % 5), 'd' + (n % 2)]));
  if (!announced) { announced = true; console.log('writing'); }
}
`;

test('20 SIGKILLs of a store writing, replacing, deleting and clearing values: no drift and no stray entries after any of them', async () => {
  const dir = await tempDir();
  const orphansSeen: number[] = [];
  for (let kill = 0; kill < 20; kill++) {
    const child = startModule(WRITER, [dir, String(kill)]);
    await child.line((line) => line === 'writing');
    // A random moment among the writes: a few milliseconds to a quarter of a second later.
    await new Promise((resolve) => setTimeout(resolve, Math.random() * 250));
    child.child.kill('SIGKILL');
    await child.exited;
    const report = await verifyDirectory(dir, { fix: false });
    expect(report.driftedScopes, `after kill ${kill}`).toEqual([]);
    expect(report.kept, `after kill ${kill}`).toEqual(report.counted);
    expect(report.strayEntries, `after kill ${kill}`).toBe(0);
    orphansSeen.push(report.orphanFiles);
  }
  // Files written for a batch that the kill cut off are orphans: the next open's sweep removes them.
  const store = await LevelStore.open(dir, { maxSizeBytes: Infinity });
  const { items } = store.usage();
  await store.close();
  const last = await verifyDirectory(dir, { fix: false });
  expect(last).toMatchObject({ driftedScopes: [], strayEntries: 0, orphanFiles: 0 });
  expect(last.counted.items).toBe(items);
  expect(items).toBeGreaterThan(0);
  console.log(`orphan files found after each kill (removed by the next open): ${orphansSeen.join(' ')}`);
});
