import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { execFileSync } from 'node:child_process';
import { chown, link, mkdir, open as openFile, readdir, rename, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { describe, expect, onTestFinished, test } from 'vitest';
import { isCacheError } from '../src/errors.js';
import { BlobFiles } from '../src/level/blob-files.js';
import { LevelStore } from '../src/level/level-store.js';
import { LocalBackend, type LocalGetSetHandle } from '../src/local-backend.js';
import { ROOT_SCOPE } from '../src/scope-path.js';
import type { EncodedValue } from '../src/store.js';
import { PROJECT_ROOT } from './support/child.js';
import { tempDir } from './support/temp-dir.js';
import { HALF_WRITER } from './support/half-writer.js';

const S = ROOT_SCOPE;
const NOBODY = 65534;
const binary = (modified: number) => ({ modified, value: { encoding: 'binary' } });

async function open(options: { maxSizeBytes?: number } = {}) {
  const dir = await tempDir();
  const store = await LevelStore.open(dir, { maxSizeBytes: options.maxSizeBytes ?? Infinity });
  onTestFinished(() => store.close());
  return { dir, store };
}

function bytesOf(store: LevelStore, id: string): Buffer | undefined {
  const record = store.read(S, id);
  return record && Buffer.from(record.value.bytes);
}

async function refusal(promise: Promise<unknown>): Promise<string> {
  try {
    await promise;
    return 'committed';
  } catch (error) {
    return isCacheError(error) ? error.code : String(error);
  }
}

describe('LevelStore.writeFile: a value committed from a reserved file', () => {
  test('moves the file into the store read-only, without a copy, and the new value shows only once the commit resolves', async () => {
    const { dir, store } = await open();
    await store.write(S, 'id', { modified: 1, value: { encoding: 'binary', bytes: new Uint8Array(64 * 1024).fill(1) } });
    const { reservation, path } = await store.reserve();
    expect((await stat(join(dir, 'temp'))).mode & 0o777).toBe(0o700);
    expect((await stat(path)).mode & 0o777).toBe(0o600);
    await writeFile(path, Buffer.alloc(100 * 1024, 2));
    const { ino } = await stat(path);
    const commit = store.writeFile(S, 'id', binary(2), reservation);
    expect(bytesOf(store, 'id')!.every((byte) => byte === 1)).toBe(true);
    await commit;
    const record = store.readReference(S, 'id');
    expect(record?.modified).toBe(2);
    const stored = await stat(store.filePath(record!.file!.name));
    expect({ ino: stored.ino, mode: stored.mode & 0o777, size: stored.size }).toEqual({ ino, mode: 0o400, size: 100 * 1024 });
    expect(bytesOf(store, 'id')!.equals(Buffer.alloc(100 * 1024, 2))).toBe(true);
    expect(await readdir(join(dir, 'temp'))).toEqual([]);
    expect(store.reservations).toBe(0);
    // The reservation is spent: committing it again is refused.
    expect(await refusal(store.writeFile(S, 'id', binary(3), reservation))).toBe('CACHE_FILE_REFUSED');
    expect((await store.verify({ fix: false })).orphanFiles).toBe(0);
  });

  test('keeps a small file inline, as a value written with its bytes', async () => {
    const { dir, store } = await open();
    const { reservation, path } = await store.reserve();
    await writeFile(path, 'small');
    await store.writeFile(S, 'id', binary(1), reservation);
    expect(store.readReference(S, 'id')?.file).toBeUndefined();
    expect(bytesOf(store, 'id')!.toString()).toBe('small');
    expect(await readdir(join(dir, 'temp'))).toEqual([]);
    expect(await readdir(join(dir, 'blobs')).catch(() => [])).toEqual([]);
  });

  test.each([
    ['a symbolic link', async (path: string, dir: string) => {
      await writeFile(join(dir, 'elsewhere'), Buffer.alloc(64 * 1024, 9));
      await rm(path);
      await symlink(join(dir, 'elsewhere'), path);
    }],
    ['a hard link', async (path: string, dir: string) => {
      await writeFile(path, Buffer.alloc(64 * 1024, 9));
      await link(path, join(dir, 'second-name'));
    }],
    ['a FIFO', async (path: string) => {
      await rm(path);
      execFileSync('mkfifo', [path]);
    }],
    ['a directory', async (path: string) => {
      await rm(path);
      await mkdir(path);
    }],
    ["another user's file", async (path: string) => {
      await writeFile(path, Buffer.alloc(64 * 1024, 9));
      await chown(path, NOBODY, NOBODY);
    }],
  ])('refuses %s with CACHE_FILE_REFUSED, keeps the old value, and the reservation stays usable', async (_kind, replace) => {
    const { dir, store } = await open();
    await store.write(S, 'id', { modified: 1, value: { encoding: 'binary', bytes: Buffer.from('old') } });
    const { reservation, path } = await store.reserve();
    await replace(path, dir);
    expect(await refusal(store.writeFile(S, 'id', binary(2), reservation))).toBe('CACHE_FILE_REFUSED');
    expect(bytesOf(store, 'id')!.toString()).toBe('old');
    expect(await readdir(join(dir, 'blobs')).catch(() => [])).toEqual([]);
    // Put right, the same reservation commits.
    await rm(path, { recursive: true });
    await writeFile(path, 'new');
    await store.writeFile(S, 'id', binary(2), reservation);
    expect(bytesOf(store, 'id')!.toString()).toBe('new');
  });

  test('refuses a number it did not give, and a value over the size limit, and discard removes the file', async () => {
    const { dir, store } = await open({ maxSizeBytes: 50 * 1024 });
    expect(await refusal(store.writeFile(S, 'id', binary(1), 12345))).toBe('CACHE_FILE_REFUSED');
    const { reservation, path } = await store.reserve();
    await writeFile(path, Buffer.alloc(64 * 1024, 3));
    expect(await refusal(store.writeFile(S, 'id', binary(1), reservation))).toBe('CACHE_OVER_SIZE_LIMIT');
    expect(store.read(S, 'id')).toBeUndefined();
    await store.discard(reservation);
    expect(await readdir(join(dir, 'temp'))).toEqual([]);
    expect(await refusal(store.writeFile(S, 'id', binary(1), reservation))).toBe('CACHE_FILE_REFUSED');
  });
});

test('BlobFiles.adopt refuses a file swapped for another between its checks and its move, and leaves nothing', async () => {
  const dir = await tempDir();
  const blobs = new BlobFiles(join(dir, 'blobs'), { sync: true });
  const path = join(dir, 'reserved');
  await writeFile(path, Buffer.alloc(64 * 1024, 1));
  const checked = await openFile(path, 'r');
  try {
    // The writer puts another file of the same size under the name once the commit has checked the first.
    await writeFile(join(dir, 'other'), Buffer.alloc(64 * 1024, 2));
    await rename(join(dir, 'other'), path);
    const name = blobs.newName();
    expect(await refusal(blobs.adopt(path, checked.fd, name, 64 * 1024))).toBe('CACHE_FILE_REFUSED');
    await blobs.removed();
    expect(await blobs.list()).toEqual([]);
  } finally {
    await checked.close();
  }
});

/**
 * A process that commits reserved files in a loop to four items (large and small values, each byte the write's
 * number), leaves every fifth reservation written and uncommitted, and prints each acknowledged commit.
 */
const COMMITTER = `
import { writeFile } from 'node:fs/promises';
import { LevelStore } from ${JSON.stringify(join(PROJECT_ROOT, 'dist/src/level/level-store.js'))};
import { ROOT_SCOPE } from ${JSON.stringify(join(PROJECT_ROOT, 'dist/src/scope-path.js'))};
const [dir, first] = process.argv.slice(-2);
const store = await LevelStore.open(dir, { maxSizeBytes: Infinity });
for (let n = Number(first); ; n++) {
  const { reservation, path } = await store.reserve();
  await writeFile(path, Buffer.alloc(n % 3 === 0 ? 1000 : 40_000 + n, n % 256));
  if (n % 5 === 4) continue;
  const id = 'k' + (n % 4);
  await store.writeFile(ROOT_SCOPE, id, { modified: n, value: { encoding: 'binary' } }, reservation);
  console.log(JSON.stringify({ id, n }));
}
`;

test('SIGKILLs during file commits leave each item at its acknowledged value or a later one, whole, and no file behind', async () => {
  const dir = await tempDir();
  const acknowledged = new Map<string, number>();
  let next = 1;
  for (let kill = 0; kill < 6; kill++) {
    const child = spawn(process.execPath, ['--input-type=module', '-e', COMMITTER, '--', dir, String(next)], { stdio: ['ignore', 'pipe', 'inherit'] });
    const lines = createInterface({ input: child.stdout });
    const wanted = 3 + Math.floor(Math.random() * 20);
    let seen = 0;
    for await (const line of lines) {
      const { id, n } = JSON.parse(line) as { id: string; n: number };
      acknowledged.set(id, n);
      next = Math.max(next, n + 1);
      if (++seen === wanted) break;
    }
    child.kill('SIGKILL');
    if (child.exitCode === null && child.signalCode === null) await once(child, 'exit');
    next += 100;
    const store = await LevelStore.open(dir, { maxSizeBytes: Infinity });
    try {
      for (const [id, n] of acknowledged) {
        const record = store.read(S, id)!;
        expect(record.modified).toBeGreaterThanOrEqual(n);
        const m = record.modified;
        expect(Buffer.from(record.value.bytes).equals(Buffer.alloc(m % 3 === 0 ? 1000 : 40_000 + m, m % 256))).toBe(true);
      }
      // verify waits for the open's sweeps of blobs/ and temp/.
      expect((await store.verify({ fix: false })).orphanFiles).toBe(0);
      expect(await readdir(join(dir, 'temp'))).toEqual([]);
    } finally {
      await store.close();
    }
  }
  expect(acknowledged.size).toBe(4);
});


function worker(path: string) {
  const child = spawn(process.execPath, ['--input-type=module', '-e', HALF_WRITER, '--', path], { stdio: ['pipe', 'pipe', 'inherit'] });
  const lines = createInterface({ input: child.stdout })[Symbol.asyncIterator]();
  return { child, line: async () => (await lines.next()).value as string };
}

describe('LocalBackend: a worker process writes the reserved file while the getset is held', () => {
  const codec = { encode: (value: Uint8Array) => ({ encoding: 'binary', bytes: value }), decode: (value: { bytes: Uint8Array }) => value.bytes };

  async function backendOn() {
    const { dir, store } = await open();
    const backend = new LocalBackend<Uint8Array, EncodedValue>(store, codec, { sweepIntervalMs: 3_600_000 });
    onTestFinished(() => backend.close());
    await backend.set(S, 'id', Buffer.from('old'), { modified: 1 });
    return { dir, backend };
  }

  test('readers see the new value only once the holder committed it and released', async () => {
    const { backend } = await backendOn();
    const gs = (await backend.getset(S, 'id', { wait: true })) as LocalGetSetHandle<Uint8Array>;
    const { reservation, path } = await backend.reserve();
    const { child, line } = worker(path);
    expect(await line()).toBe('half');
    expect(await backend.get(S, 'id', { wait: false })).toBeNull();
    child.stdin.write('go\n');
    expect(await line()).toBe('done');
    await gs.commitFile(reservation, { encoding: 'binary' });
    expect(await backend.get(S, 'id', { wait: false })).toBeNull();
    await gs.release();
    const read = (await backend.get(S, 'id', { wait: false }))!;
    expect(Buffer.from(await read.item!.value()).equals(Buffer.alloc(64 * 1024, 7))).toBe(true);
    await read.release();
  });

  test('a worker killed halfway leaves the old value, and discarding leaves temp/ empty', async () => {
    const { dir, backend } = await backendOn();
    const gs = await backend.getset(S, 'id', { wait: true });
    const { reservation, path } = await backend.reserve();
    const { child, line } = worker(path);
    expect(await line()).toBe('half');
    child.kill('SIGKILL');
    await once(child, 'exit');
    await backend.discard(reservation);
    await gs.release();
    const read = (await backend.get(S, 'id', { wait: false }))!;
    expect(Buffer.from(await read.item!.value()).toString()).toBe('old');
    await read.release();
    expect(await readdir(join(dir, 'temp'))).toEqual([]);
  });

  test('a released handle no longer commits: CACHE_LOCK_NOT_HELD, and the reservation stays', async () => {
    const { backend } = await backendOn();
    const gs = (await backend.getset(S, 'id', { wait: true })) as LocalGetSetHandle<Uint8Array>;
    const { reservation, path } = await backend.reserve();
    await writeFile(path, 'new');
    await gs.release();
    expect(await refusal(gs.commitFile(reservation, { encoding: 'binary' }))).toBe('CACHE_LOCK_NOT_HELD');
    await backend.commitFile(S, 'id', reservation, { modified: 2, encoding: 'binary' });
    const read = (await backend.get(S, 'id', { wait: false }))!;
    expect(Buffer.from(await read.item!.value()).toString()).toBe('new');
    await read.release();
  });
});
