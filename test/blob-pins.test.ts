import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { readFileSync, readlinkSync } from 'node:fs';
import { mkdir, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { describe, expect, onTestFinished, test } from 'vitest';
import { LevelCache } from '../src/index.js';
import { LevelStore } from '../src/level/level-store.js';
import { LocalBackend } from '../src/local-backend.js';
import { ROOT_SCOPE } from '../src/scope-path.js';
import type { EncodedValue } from '../src/store.js';
import { eventually } from './conformance/support.js';
import { PROJECT_ROOT } from './support/child.js';
import { tempDir } from './support/temp-dir.js';

const keepBytes = { encode: (value: EncodedValue) => value, decode: (value: EncodedValue) => value };
const large = (fill: number): EncodedValue => ({ encoding: 'binary', bytes: new Uint8Array(64 * 1024).fill(fill) });
const S = ROOT_SCOPE;

/** A daemon's store and backend in this process, on a fresh directory, with a clock the test moves. */
async function open(options: { maxSizeBytes?: number } = {}) {
  const dir = await tempDir();
  let nowMs = 1_800_000_000_000;
  const now = (): number => nowMs;
  const store = await LevelStore.open(dir, { maxSizeBytes: options.maxSizeBytes ?? Infinity, now });
  const backend = new LocalBackend<EncodedValue, EncodedValue>(store, keepBytes, { now, sweepIntervalMs: 3_600_000 });
  onTestFinished(() => backend.close());
  return { dir, store, backend, advance: (ms: number) => (nowMs += ms) };
}

/** The path of the file that holds item `id`'s value now (read through the store, as the daemon does). */
function fileOf(store: LevelStore, id: string): string {
  const record = store.readReference(S, id);
  if (!record?.file) throw new Error(`${id} has no file`);
  return store.filePath(record.file.name);
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}

describe('a value file handed out under a held handle', () => {
  test('survives its replacement by the getset holder until release, counted in pinnedBytes, then goes', async () => {
    const { store, backend } = await open();
    await backend.set(S, 'id', large(1), { modified: 1 });
    const old = fileOf(store, 'id');
    const gs = await backend.getset(S, 'id', { wait: true });
    await gs.set!(large(2));
    expect(fileOf(store, 'id')).not.toBe(old);
    await store.verify({ fix: true });
    expect(await exists(old)).toBe(true);
    expect(store.usage().pinnedBytes).toBe(64 * 1024);
    // Eviction sees the bytes that still take the disk.
    expect(store.totals().bytes).toBe(store.usage().bytes + 64 * 1024);
    // The bytes handed out are those of the old file.
    expect(Buffer.from((await gs.item!.value()).bytes).every((byte) => byte === 1)).toBe(true);
    await gs.release();
    await eventually(async () => !(await exists(old)), 'the replaced file is removed after release');
    expect(store.usage().pinnedBytes).toBe(0);
    expect((await store.verify({ fix: false })).orphanFiles).toBe(0);
  });

  test('the stale item of a getset survives its replacement too', async () => {
    const { store, backend, advance } = await open();
    await backend.set(S, 'id', large(1), { modified: 1, ttlMs: 1000, staleMs: 60_000 });
    const old = fileOf(store, 'id');
    advance(2000);
    const gs = await backend.getset(S, 'id', { wait: true });
    expect(gs.item).toBeNull();
    expect(gs.stale).not.toBeNull();
    await gs.set!(large(2));
    await gs.set!(large(3));
    expect(await exists(old)).toBe(true);
    // The first replacement's own file was never handed out: it goes at once.
    await gs.release();
    await eventually(async () => !(await exists(old)), 'the stale file is removed after release');
    expect(store.usage().pinnedBytes).toBe(0);
  });

  test('a delete and a clear queued elsewhere wait for the holder; the file stays until release, then goes', async () => {
    const { store, backend } = await open();
    await backend.set(S, 'id', large(1), { modified: 1 });
    const file = fileOf(store, 'id');
    const read = backend.readNow(S, 'id')!;
    const deleted = backend.delete(S, 'id');
    const cleared = backend.clear(S);
    await eventually(() => backend.lockStats().waiting === 2, 'the delete and the clear wait');
    expect(await exists(file)).toBe(true);
    read.lease.release();
    await Promise.all([deleted, cleared]);
    await eventually(async () => !(await exists(file)), 'the file is removed once the reader released it');
  });

  test('a replaced file whose handle is never released goes when the store closes', async () => {
    const { store, backend } = await open();
    await backend.set(S, 'id', large(1), { modified: 1 });
    const file = fileOf(store, 'id');
    const gs = await backend.getset(S, 'id', { wait: true });
    await gs.set!(large(2));
    expect(await exists(file)).toBe(true);
    // The handle is never released: closing the store ends every handle, and the file waits for nothing.
    await backend.close();
    expect(await exists(file)).toBe(false);
  });

  test('eviction and expiry skip a held item: its file stays until release', async () => {
    const { store, backend, advance } = await open({ maxSizeBytes: 200 * 1024 });
    await backend.set(S, 'held', large(1), { modified: 1, ttlMs: 1000 });
    const file = fileOf(store, 'held');
    const read = backend.readNow(S, 'held')!;
    expect(read.record).toBeDefined();
    advance(2000);
    for (let n = 0; n < 3; n++) await backend.set(S, `other ${n}`, large(2), { modified: 1 });
    const report = await backend.gc({ dryRun: false });
    expect(report.expiredItems).toBe(0);
    expect(await exists(file)).toBe(true);
    read.lease.release();
    await backend.gc({ dryRun: false });
    await eventually(async () => !(await exists(file)), 'the expired item goes once released');
  });
});

/**
 * A process that holds a getset on a large item, replaces it through the handle, takes a path to a small item, prints
 * both paths and waits to be killed.
 */
const HOLDER = `
import { LevelCache } from ${JSON.stringify(join(PROJECT_ROOT, 'dist/src/index.js'))};
const cache = await LevelCache.open(process.argv.at(-1), { codec: 'binary' });
await cache.set('large', new Uint8Array(65536).fill(1));
await cache.set('small', new Uint8Array([1, 2, 3]));
const gs = await cache.getset('large');
const large = await gs.item.path();
await gs.set(new Uint8Array(65536).fill(2));
const got = await cache.get('small');
console.log(JSON.stringify({ large, small: await got.item.path() }));
setInterval(() => {}, 1000);
`;

test('a crash while a replaced file waits for its handle leaves nothing: the next open sweeps it, and the next process the private files', async () => {
  const dir = await tempDir();
  const child = spawn(process.execPath, ['--input-type=module', '-e', HOLDER, '--', dir], { stdio: ['ignore', 'pipe', 'inherit'] });
  const [line] = (await once(createInterface({ input: child.stdout }), 'line')) as [string];
  const { large, small } = JSON.parse(line) as { large: string; small: string };
  expect(await exists(large)).toBe(true);
  expect(await exists(small)).toBe(true);
  child.kill('SIGKILL');
  await once(child, 'exit');
  const cache = await LevelCache.open<Uint8Array>(dir, { codec: 'binary' });
  onTestFinished(() => cache.close());
  // verify waits for the open's sweep.
  expect((await cache.verify()).orphanFiles).toBe(0);
  expect(await exists(large)).toBe(false);
  await using got = await cache.get('large');
  expect((await got.item!.value()).every((byte) => byte === 2)).toBe(true);
  // This process's first path() removes the private directory of the dead one.
  await using mine = await cache.get('small');
  expect(dirname(await mine.item!.path())).not.toBe(dirname(small));
  expect(await exists(dirname(small))).toBe(false);
});

test("a process removes only its own PID namespace's private directories of processes that are gone, never a live one's", async () => {
  const uid = process.getuid!();
  const namespace = /\[(\d+)\]/.exec(readlinkSync('/proc/self/ns/pid'))![1]!;
  const stat = readFileSync(`/proc/${process.pid}/stat`, 'utf8');
  const started = stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19]!;
  const exited = spawn(process.execPath, ['-e', '']);
  await once(exited, 'exit');
  const tag = Math.random().toString(36).slice(2, 8);
  const dirs = {
    // A process of another namespace (a container sharing /tmp): its pid means nothing here.
    otherNamespace: `hoard-${uid}-${BigInt(namespace) + 1n}-${exited.pid}-1-${tag}`,
    // This test's own process, live.
    live: `hoard-${uid}-${namespace}-${process.pid}-${started}-${tag}`,
    // A process that had this test's pid before it (another start time): gone.
    reused: `hoard-${uid}-${namespace}-${process.pid}-${BigInt(started) - 1n}-${tag}`,
    dead: `hoard-${uid}-${namespace}-${exited.pid}-1-${tag}`,
  };
  for (const name of Object.values(dirs)) {
    await mkdir(join(tmpdir(), name), { mode: 0o700 });
    onTestFinished(() => rm(join(tmpdir(), name), { recursive: true, force: true }));
  }
  // Another process's first private file.
  const writer = spawn(
    process.execPath,
    ['--input-type=module', '-e', `import { writePrivateFile } from ${JSON.stringify(join(PROJECT_ROOT, 'dist/src/private-files.js'))}; await writePrivateFile(new Uint8Array(1));`],
    { stdio: 'inherit' },
  );
  expect((await once(writer, 'exit'))[0]).toBe(0);
  const left = Object.fromEntries(await Promise.all(Object.entries(dirs).map(async ([what, name]) => [what, await exists(join(tmpdir(), name))])));
  expect(left).toEqual({ otherNamespace: true, live: true, reused: false, dead: false });
});

test('a private file whose write ends after the cache closed is removed, and its path() rejects', async () => {
  const dir = await tempDir();
  const cache = await LevelCache.open<Uint8Array>(dir, { codec: 'binary' });
  await cache.set('small', new Uint8Array([1, 2, 3]));
  const got = await cache.get('small');
  // The write of the private file is under way while close runs.
  const path = got.item!.path().then(
    (given) => given,
    (error: unknown) => error,
  );
  await cache.close();
  const given = await path;
  if (typeof given === 'string') expect(await exists(given)).toBe(false);
  else expect(given).toMatchObject({ code: 'CACHE_LOCK_NOT_HELD' });
  await expect(got.item!.path()).rejects.toMatchObject({ code: 'CACHE_LOCK_NOT_HELD' });
});
