import { open, readdir, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { expect, onTestFinished, test } from 'vitest';
import { SessionReservations } from '../daemon/session-reservations.js';
import { LevelStore } from '../src/level/level-store.js';
import { LocalBackend } from '../src/local-backend.js';
import { ROOT_SCOPE } from '../src/scope-path.js';
import { TempFiles } from '../src/temp-files.js';
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

test('appends to more reservations than the descriptor cap keep at most 64 descriptors open, and every byte lands', async () => {
  const { dir, backend } = await setUp();
  // Two connections, as the cap is the daemon's, not a connection's.
  const connections = [new SessionReservations(backend), new SessionReservations(backend)];
  const reserved: Array<{ connection: SessionReservations; reservation: number }> = [];
  for (let n = 0; n < 100; n++) {
    const connection = connections[n % 2]!;
    reserved.push({ connection, reservation: (await connection.reserve({ withPath: false })).reservation });
  }
  const temp = join(dir, 'temp');
  const descriptorsInTemp = async (): Promise<number> => {
    const { readlink } = await import('node:fs/promises');
    let count = 0;
    for (const fd of await readdir('/proc/self/fd')) {
      if ((await readlink(`/proc/self/fd/${fd}`).catch(() => '')).startsWith(`${temp}/`)) count++;
    }
    return count;
  };
  const chunkBytes = 1_000;
  const chunk = (n: number, round: number): Buffer => Buffer.alloc(chunkBytes, (n * 3 + round) % 256);
  let most = 0;
  for (let round = 0; round < 3; round++) {
    // Every reservation's chunk in flight at once, so that every append needs a descriptor.
    const appends = Promise.all(reserved.map(({ connection, reservation }, n) => connection.append(reservation, round * chunkBytes, chunk(n, round))));
    most = Math.max(most, await descriptorsInTemp());
    await appends;
    most = Math.max(most, await descriptorsInTemp());
  }
  expect(most).toBeGreaterThan(0);
  expect(most).toBeLessThanOrEqual(64);
  const { readFile } = await import('node:fs/promises');
  const names = (await readdir(temp)).sort((a, b) => Number.parseInt(a.split('-r')[1]!, 36) - Number.parseInt(b.split('-r')[1]!, 36));
  expect(names).toHaveLength(100);
  for (const [n, name] of names.entries()) {
    expect((await readFile(join(temp, name))).equals(Buffer.concat([chunk(n, 0), chunk(n, 1), chunk(n, 2)]))).toBe(true);
  }
  for (const connection of connections) await connection.discardAll();
  expect(await descriptorsInTemp()).toBe(0);
});

test("chunks in flight to different reservations count together against the size limit, and a failed one stops counting", async () => {
  const { dir, backend } = await setUp({ maxSizeBytes: 100_000 });
  const [a, b] = [new SessionReservations(backend), new SessionReservations(backend)];
  const first = (await a.reserve({ withPath: false })).reservation;
  const second = (await b.reserve({ withPath: false })).reservation;
  // Both sent before either is written: before, each passed the check against the same snapshot.
  const codes = await Promise.all([codeOf(a.append(first, 0, Buffer.alloc(60_000))), codeOf(b.append(second, 0, Buffer.alloc(60_000)))]);
  expect(codes.sort()).toEqual(['CACHE_OVER_SIZE_LIMIT', 'resolved']);
  expect(backend.usage()!.reservedBytes).toBe(60_000);
  // A chunk whose write fails (its file gone) is counted off again.
  const gone = (await b.reserve({ withPath: false })).reservation;
  const { unlink } = await import('node:fs/promises');
  const names = await readdir(join(dir, 'temp'));
  await unlink(join(dir, 'temp', names.find((name) => name.endsWith(`-r${gone.toString(36)}`))!));
  expect(await codeOf(b.append(gone, 0, Buffer.alloc(30_000)))).toBe('CACHE_FILE_REFUSED');
  expect(backend.usage()!.reservedBytes).toBe(60_000);
  await a.discardAll();
  await b.discardAll();
  expect(backend.usage()!.reservedBytes).toBe(0);
});

test("a reservation discarded while a chunk is being appended closes its descriptor only after the write: the append never fails on a closed descriptor, nor writes into a file opened meanwhile", async () => {
  const dir = await tempDir();
  const temp = new TempFiles(join(dir, 'temp'));
  const chunk = Buffer.alloc(256 * 1024, 0x41);
  const outcomes = new Map<string, number>();
  for (let round = 0; round < 200; round++) {
    const { reservation } = await temp.reserve();
    const victim = join(dir, `victim-${round}`);
    await writeFile(victim, '');
    const appending = temp.append(reservation, 0, chunk).then(
      () => 'written',
      (error: { code?: string; cause?: { code?: string } }) => `${error.code}${error.cause?.code === undefined ? '' : ` ${error.cause.code}`}`,
    );
    const discarding = temp.discard(reservation);
    // Other files opened meanwhile, as LevelDB's or a value's would be: a descriptor number reused under the write.
    const others = await Promise.all(Array.from({ length: 8 }, () => open(victim, 'r+')));
    const outcome = await appending;
    await discarding;
    for (const other of others) await other.close();
    outcomes.set(outcome, (outcomes.get(outcome) ?? 0) + 1);
    expect((await stat(victim)).size).toBe(0);
  }
  // Before: `CACHE_STORAGE EBADF` in about 4% of rounds (the descriptor closed under the write).
  expect([...outcomes.keys()].filter((outcome) => outcome !== 'written' && !outcome.startsWith('CACHE_FILE_REFUSED'))).toEqual([]);
});
