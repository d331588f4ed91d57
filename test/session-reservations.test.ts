import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { expect, onTestFinished, test } from 'vitest';
import { SessionReservations } from '../daemon/session-reservations.js';
import { LevelStore } from '../src/level/level-store.js';
import { LocalBackend } from '../src/local-backend.js';
import { ROOT_SCOPE } from '../src/scope-path.js';
import type { EncodedValue } from '../src/store.js';
import { tempDir } from './support/temp-dir.js';

// The daemon's per-connection reservations, as `cache/writeChunk` (issue 14 §6) uses them: a reservation without a
// path is filled by appends at the size so far, then committed by number.

async function setUp(options: { maxSizeBytes?: number } = {}) {
  const dir = await tempDir();
  const store = await LevelStore.open(dir, { maxSizeBytes: options.maxSizeBytes ?? Infinity });
  const backend = new LocalBackend<EncodedValue, EncodedValue>(store, { encode: (value) => value, decode: (value) => value });
  onTestFinished(() => backend.close());
  return { dir, backend, reservations: new SessionReservations(backend) };
}

async function codeOf(promise: Promise<unknown>): Promise<unknown> {
  return promise.then(
    () => 'resolved',
    (error: { code?: unknown }) => error.code,
  );
}

test('appends at the size so far fill a reservation without a path, which then commits by number', async () => {
  const { backend, reservations } = await setUp();
  const { reservation, path } = await reservations.reserve({ withPath: false });
  expect(path).toBeNull();
  const chunk = Buffer.alloc(40_000, 5);
  // Sent without waiting, as a client keeps several chunks in flight: they run in order.
  await Promise.all([reservations.append(reservation, 0, chunk), reservations.append(reservation, 40_000, chunk)]);
  expect(await codeOf(reservations.append(reservation, 40_000, chunk))).toBe('CACHE_INVALID_PARAMS');
  await reservations.commit(reservation, () => backend.commitFile(ROOT_SCOPE, 'id', reservation, { modified: 1, encoding: 'binary' }));
  await using got = (await backend.get(ROOT_SCOPE, 'id', { wait: false }))!;
  expect(Buffer.from((await got.item!.value()).bytes).equals(Buffer.alloc(80_000, 5))).toBe(true);
  // Spent: neither appended to nor committed again.
  expect(await codeOf(reservations.append(reservation, 80_000, chunk))).toBe('CACHE_FILE_REFUSED');
  expect(await codeOf(reservations.commit(reservation, async () => {}))).toBe('CACHE_FILE_REFUSED');
  expect(reservations.size).toBe(0);
});

test("appends are refused to a reservation with a path, to another number, and past the store's size limit", async () => {
  const { dir, reservations } = await setUp({ maxSizeBytes: 100_000 });
  const withPath = await reservations.reserve({ withPath: true });
  expect(withPath.path).toMatch(/temp/);
  expect(await codeOf(reservations.append(withPath.reservation, 0, Buffer.from('x')))).toBe('CACHE_FILE_REFUSED');
  expect(await codeOf(reservations.append(withPath.reservation + 100, 0, Buffer.from('x')))).toBe('CACHE_FILE_REFUSED');
  const { reservation } = await reservations.reserve({ withPath: false });
  expect(await codeOf(reservations.append(reservation, 0, Buffer.alloc(60_000)))).toBe('resolved');
  expect(await codeOf(reservations.append(reservation, 60_000, Buffer.alloc(60_000)))).toBe('CACHE_OVER_SIZE_LIMIT');
  expect(await readdir(join(dir, 'temp'))).toHaveLength(2);
  await reservations.discardAll();
  expect(await readdir(join(dir, 'temp'))).toEqual([]);
});

/** How many of this process's descriptors are open on the file at `path`. */
async function descriptorsOn(path: string): Promise<number> {
  const { readlink } = await import('node:fs/promises');
  let count = 0;
  for (const fd of await readdir('/proc/self/fd')) {
    if ((await readlink(`/proc/self/fd/${fd}`).catch(() => '')) === path) count++;
  }
  return count;
}

test('appends keep one descriptor per reservation, closed at commit, at discard and when the connection closes', async () => {
  const { dir, backend, reservations } = await setUp();
  const chunk = Buffer.alloc(10_000, 1);
  const paths = async (): Promise<string[]> => (await readdir(join(dir, 'temp'))).map((name) => join(dir, 'temp', name));
  const committed = (await reservations.reserve({ withPath: false })).reservation;
  const [committedPath] = await paths();
  for (let n = 0; n < 8; n++) await reservations.append(committed, n * 10_000, chunk);
  expect(await descriptorsOn(committedPath!)).toBe(1);
  await reservations.commit(committed, () => backend.commitFile(ROOT_SCOPE, 'c', committed, { modified: 1, encoding: 'binary' }));
  expect(await descriptorsOn(committedPath!)).toBe(0);
  const discarded = (await reservations.reserve({ withPath: false })).reservation;
  const left = (await reservations.reserve({ withPath: false })).reservation;
  const [first, second] = await paths();
  await reservations.append(discarded, 0, chunk);
  await reservations.append(left, 0, chunk);
  expect((await descriptorsOn(first!)) + (await descriptorsOn(second!))).toBe(2);
  await reservations.discard(discarded);
  await reservations.discardAll();
  expect((await descriptorsOn(first!)) + (await descriptorsOn(second!))).toBe(0);
});
