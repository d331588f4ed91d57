import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { closeSync, openSync, writeSync } from 'node:fs';
import { chmod, chown, mkdir, readdir, readFile, rename, rm, truncate, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { describe, expect, onTestFinished, test } from 'vitest';
import { connect, type RemoteCache } from '../client/index.js';
import { startDaemon } from '../daemon/index.js';
import { LevelCache } from '../src/index.js';
import { LevelStore } from '../src/level/level-store.js';
import { repairLevelStore } from '../src/level/repair.js';
import { LocalBackend } from '../src/local-backend.js';
import { ROOT_SCOPE } from '../src/scope-path.js';
import type { EncodedValue } from '../src/store.js';
import { PROJECT_ROOT, runModule } from './support/child.js';
import { BIN, type DaemonProcess, runHoard, startDaemonProcess, stopDaemonsAfterTest } from './support/processes.js';
import { tempDir } from './support/temp-dir.js';

/** A data directory whose LevelDB manifest has been overwritten with garbage. */
async function damagedDataDir(): Promise<string> {
  const dataDir = join(await tempDir('hd-'), 'data');
  const cache = await LevelCache.open<number>(dataDir);
  for (let n = 0; n < 100; n++) await cache.set(`k${n}`, n);
  await cache.close();
  const manifest = (await readdir(dataDir)).find((name) => name.startsWith('MANIFEST-'))!;
  const bytes = await readFile(join(dataDir, manifest));
  await writeFile(join(dataDir, manifest), Buffer.alloc(bytes.length, 0x55));
  return dataDir;
}

/** Starts `hoard daemon` and resolves once it listens (it goes on running) or exits, with what it wrote to stderr. */
function tryDaemon(socketPath: string, dataDir: string): Promise<{ outcome: 'listening' | number | null; stderr: string }> {
  const child = spawn(process.execPath, [BIN, 'daemon', '--socket', socketPath, '--data-dir', dataDir], { stdio: ['ignore', 'ignore', 'pipe'] });
  onTestFinished(() => void child.kill('SIGKILL'));
  let stderr = '';
  return new Promise((resolve) => {
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => {
      stderr += chunk;
      if (stderr.includes('listening on')) resolve({ outcome: 'listening', stderr });
    });
    child.on('exit', (code) => resolve({ outcome: code, stderr }));
  });
}

/** A fresh `size` tmpfs (root only), unmounted when the test ends: the disk that fills up. */
async function smallDisk(size = '2m'): Promise<{ dir: string; disk: string }> {
  const dir = await tempDir('hd-');
  const disk = join(dir, 'disk');
  await mkdir(disk);
  execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${size}`, 'tmpfs', disk]);
  onTestFinished(() => void execFileSync('umount', ['-l', disk]));
  return { dir, disk };
}

/** Writes `path` until the filesystem has no room left, as another program would; returns its size in bytes. */
function fillDisk(path: string): number {
  const fd = openSync(path, 'w');
  let written = 0;
  try {
    for (const chunk of [64 * 1024, 4096, 1]) {
      const bytes = Buffer.alloc(chunk, 0x5a);
      for (;;) {
        try {
          written += writeSync(fd, bytes);
        } catch (error) {
          if ((error as NodeJS.ErrnoException).code === 'ENOSPC') break;
          throw error;
        }
      }
    }
  } finally {
    closeSync(fd);
  }
  return written;
}

/** Sets values of `bytes` under `prefix` until one fails, and returns that failure. */
async function setUntilRefused(cache: RemoteCache<Uint8Array>, prefix: string, bytes: number): Promise<unknown> {
  for (let n = 0; n < 1000; n++) {
    const failure = await cache.set(`${prefix}${n}`, new Uint8Array(bytes).fill(n)).then(() => undefined, (error: unknown) => error);
    if (failure) return failure;
  }
  throw new Error(`no set of ${bytes} bytes failed`);
}

/** Stops a daemon process the way `hoard stop` does, and waits for it to exit. */
async function stopDaemon(daemon: DaemonProcess): Promise<void> {
  expect(await runHoard(['--socket', daemon.socketPath, 'stop'])).toMatchObject({ code: 0 });
  expect(await daemon.exited).toBe(0);
}

/**
 * Fills the disk until a write of the database itself fails, with a large value's file taking the last of the space:
 * each round frees exactly one file's worth and sets a value of that size, until the record after the file no longer
 * fits in the database log's last page.
 */
async function fillWithLargeValues(cache: RemoteCache<Uint8Array>, filler: string): Promise<{ failure: unknown; acknowledged: number }> {
  const bytes = 32 * 1024;
  let size = fillDisk(filler);
  for (let n = 0; n < 200; n++) {
    await truncate(filler, (size -= bytes));
    const failure = await cache.set(`large${n}`, new Uint8Array(bytes).fill(n)).then(() => undefined, (error: unknown) => error);
    if (failure) return { failure, acknowledged: n };
  }
  throw new Error('no set of a large value failed');
}

describe('a full disk that is freed again', () => {
  // Each case: fill the disk under a running daemon until a write fails, free the space, write and delete with the
  // same daemon, restart it, and find every write acknowledged after the failure, and no deleted item back. With no
  // size limit: the default one (a tenth of this 4 MiB disk) would refuse the large values before the disk fills.
  const unlimited = ['--max-size', 'unlimited'];
  const cases = [
    { name: 'another program fills the disk', extra: unlimited, large: false },
    { name: 'another program fills the disk, --sync', extra: ['--sync', ...unlimited], large: false },
    { name: "a large value's file fills the disk", extra: unlimited, large: true },
  ];
  for (const { name, extra, large } of cases) {
    test.runIf(process.getuid?.() === 0)(`writes acknowledged after the disk is freed survive a restart: ${name}`, async () => {
      const { dir, disk } = await smallDisk('4m');
      const socketPath = join(dir, 's.sock');
      const dataDir = join(disk, 'data');
      const daemon = await startDaemonProcess({ socketPath, dataDir, extra });
      const cache = await connect<Uint8Array>({ socketPath, codec: 'binary', autoStart: false });
      await cache.set('kept', new Uint8Array([1]));
      await cache.set('deleted', new Uint8Array([2]));
      await cache.set('deleted-large', new Uint8Array(64 * 1024).fill(3));
      const filler = join(disk, 'filler');
      let failure: unknown;
      let largeAcknowledged = 0;
      if (large) {
        ({ failure, acknowledged: largeAcknowledged } = await fillWithLargeValues(cache, filler));
      } else {
        fillDisk(filler);
        failure = await setUntilRefused(cache, 'refused', 16 * 1024);
      }
      expect(failure).toMatchObject({ code: 'CACHE_STORAGE' });
      // The database's own write failed, not only a value file's.
      expect((failure as Error).message).toMatch(/cache database/);
      // While the disk is full, writes are refused, and say why; reads of what was acknowledged go on being served.
      for (const id of ['small', 'again']) {
        const refused = await cache.set(id, new Uint8Array([9])).then(() => undefined, (error: unknown) => error);
        expect(refused).toMatchObject({ code: 'CACHE_STORAGE' });
        expect((refused as Error).message).toMatch(/refused since one failed \(.*no space left on device/i);
      }
      await expect(cache.delete('deleted')).rejects.toMatchObject({ code: 'CACHE_STORAGE' });
      await using kept = await cache.get('kept');
      expect(await kept.item!.value()).toEqual(new Uint8Array([1]));
      await kept.release();
      await using deleted = await cache.get('deleted');
      expect(await deleted.item!.value()).toEqual(new Uint8Array([2]));
      await deleted.release();

      // Once there is room, the next write reopens the database and goes through: no restart.
      await unlink(filler);
      await cache.set('after', new Uint8Array([4]));
      await cache.set('after-large', new Uint8Array(64 * 1024).fill(5));
      await cache.delete('deleted');
      await cache.delete('deleted-large');
      await using afterRead = await cache.get('after');
      expect(await afterRead.item!.value()).toEqual(new Uint8Array([4]));
      await afterRead.release();
      await cache.close();
      await stopDaemon(daemon);
      // Said once each: why writes were refused, and that they resumed.
      expect(daemon.log.filter((line) => line.includes('writes refused'))).toHaveLength(1);
      expect(daemon.log.filter((line) => line.includes('writes refused'))[0]).toMatch(/no space left on device/i);
      expect(daemon.log.filter((line) => line.includes('writes resumed'))).toHaveLength(1);

      const restarted = await startDaemonProcess({ socketPath, dataDir, extra });
      const again = await connect<Uint8Array>({ socketPath, codec: 'binary', autoStart: false });
      onTestFinished(() => again.close());
      // Compared as Buffers: toEqual walks a large Uint8Array element by element, taking seconds.
      const read = async (id: string): Promise<Buffer | null> => {
        await using got = await again.get(id);
        return got.item ? Buffer.from(await got.item.value()) : null;
      };
      expect(await read('after')).toEqual(Buffer.from([4]));
      expect((await read('after-large'))?.equals(Buffer.alloc(64 * 1024, 5))).toBe(true);
      expect(await read('deleted')).toBeNull();
      expect(await read('deleted-large')).toBeNull();
      expect(await read('kept')).toEqual(Buffer.from([1]));
      // Every large value acknowledged before the failure still has its file.
      for (let n = 0; n < largeAcknowledged; n++) expect((await read(`large${n}`))?.equals(Buffer.alloc(32 * 1024, n))).toBe(true);
      await again.close();
      await stopDaemon(restarted);
    });
  }
});

/** A value of 16 KiB of byte `n`. */
const value = (n: number): EncodedValue => ({ encoding: 'binary', bytes: Buffer.alloc(16 * 1024, n) });

/**
 * A store on a small disk, with no memory layer (every read goes to LevelDB), holding `kept`, after a write failed
 * on the full disk and the space was freed again: writes are refused until it has reopened the database.
 */
async function storeAfterFailedWrite(): Promise<{ store: LevelStore; backend: LocalBackend<EncodedValue, EncodedValue>; dataDir: string; log: string[] }> {
  const { disk } = await smallDisk();
  const dataDir = join(disk, 'data');
  const log: string[] = [];
  const store = await LevelStore.open(dataDir, { memoryCacheBytes: 0, log: (line) => log.push(line) });
  const backend = new LocalBackend<EncodedValue, EncodedValue>(store, { encode: (kept) => kept, decode: (kept) => kept });
  onTestFinished(() => backend.close());
  await backend.set(ROOT_SCOPE, 'kept', value(1), { modified: 1 });
  const filler = join(disk, 'filler');
  fillDisk(filler);
  let failure: unknown;
  for (let n = 0; n < 100 && !failure; n++) await backend.set(ROOT_SCOPE, `x${n}`, value(2), { modified: 1 }).catch((error: unknown) => (failure = error));
  expect(failure).toMatchObject({ code: 'CACHE_STORAGE' });
  await unlink(filler);
  return { store, backend, dataDir, log };
}

describe('the reopen after a failed write', () => {
  test.runIf(process.getuid?.() === 0)('reads that come while the database is closed to be reopened wait for it, and are served', async () => {
    const { store, backend } = await storeAfterFailedWrite();

    let resumed = false;
    const writing = backend.set(ROOT_SCOPE, 'after', value(3), { modified: 2 }).finally(() => (resumed = true));
    // Each turn of the event loop, until the write has closed the database to reopen it.
    while (!store.readsPaused() && !resumed) await new Promise(setImmediate);
    expect(store.readsPaused()).toBeDefined();
    // The synchronous path steps aside, and a read waits for the reopen instead of failing.
    expect(backend.readNow(ROOT_SCOPE, 'kept')).toBeUndefined();
    const got = (await backend.get(ROOT_SCOPE, 'kept', {}))!;
    expect(Buffer.from((await got.item!.value()).bytes).equals(value(1).bytes as Buffer)).toBe(true);
    await got.release();
    await writing;
    const after = (await backend.get(ROOT_SCOPE, 'after', {}))!;
    expect(after.item?.modified).toBe(2);
    await after.release();
  });
  test.runIf(process.getuid?.() === 0)('reads go on after a reopen that failed once the database was closed: a read reopens it', async () => {
    const { backend, dataDir, log } = await storeAfterFailedWrite();
    // An open that fails after the close, though the disk has room: CURRENT names a manifest that is not there.
    const current = await readFile(join(dataDir, 'CURRENT'));
    await writeFile(join(dataDir, 'CURRENT'), 'MANIFEST-999999\n');
    await expect(backend.set(ROOT_SCOPE, 'refused', value(3), { modified: 2 })).rejects.toMatchObject({ code: 'CACHE_STORAGE' });
    expect(log.filter((line) => line.startsWith('reopening the cache database'))).toHaveLength(1);
    await writeFile(join(dataDir, 'CURRENT'), current);

    // No write comes: a read reopens the database (once the retry delay after the failed attempt is over).
    const readKept = async (): Promise<unknown> => {
      try {
        const got = (await backend.get(ROOT_SCOPE, 'kept', {}))!;
        await got.release();
        return got.item?.modified;
      } catch (error) {
        return error;
      }
    };
    const deadline = Date.now() + 20_000;
    let read = await readKept();
    // A liveness bound: a read fails at once while the retry delay (1 s) runs, and the first one after it reopens.
    while (read !== 1 && Date.now() < deadline) {
      expect(read).toMatchObject({ code: 'CACHE_STORAGE' });
      await delay(50);
      read = await readKept();
    }
    expect(read).toBe(1);
    expect(log.at(-1)).toMatch(/^writes resumed/);
    expect(backend.readNow(ROOT_SCOPE, 'kept')?.record?.modified).toBe(1);
  });
});

describe('a data directory deleted or replaced under a running daemon', () => {
  const cases = [
    { name: 'deleted, then a small value is set', replace: false, bytes: 10 },
    { name: 'replaced by an empty directory, then a large value is set', replace: true, bytes: 64 * 1024 },
  ];
  for (const { name, replace, bytes } of cases) {
    test(`${name}: the write is refused with CACHE_DATA_DIRECTORY_LOST, nothing is made there, the daemon says why and stops`, async () => {
      const dir = await tempDir('hd-');
      const socketPath = join(dir, 's.sock');
      const dataDir = join(dir, 'data');
      const daemon = await startDaemonProcess({ socketPath, dataDir });
      const cache = await connect<Uint8Array>({ socketPath, codec: 'binary', autoStart: false });
      onTestFinished(() => cache.close());
      await cache.set('before', new Uint8Array(bytes).fill(1));
      if (replace) {
        await rename(dataDir, join(dir, 'moved'));
        await mkdir(dataDir);
      } else {
        await rm(dataDir, { recursive: true });
      }
      await expect(cache.set('after', new Uint8Array(bytes).fill(2))).rejects.toMatchObject({ code: 'CACHE_DATA_DIRECTORY_LOST' });
      await daemon.exited;
      expect(daemon.log.join('\n')).toContain(`the cache directory ${dataDir} was ${replace ? 'replaced' : 'deleted'} while hoard had it open`);
      expect(daemon.log.join('\n')).toMatch(/stopping: the data directory is lost/);
      // Not made again, and nothing written into the directory that took its place.
      expect(await readdir(dataDir).catch((error: NodeJS.ErrnoException) => error.code)).toEqual(replace ? [] : 'ENOENT');
    });
  }

  test('deleted while the daemon is idle: it notices by itself, says why and stops, serving nothing more from it', async () => {
    const dir = await tempDir('hd-');
    const socketPath = join(dir, 's.sock');
    const dataDir = join(dir, 'data');
    const daemon = await startDaemonProcess({ socketPath, dataDir });
    await rm(dataDir, { recursive: true });
    // No request: its periodic check (once a second) finds the directory gone. 20 s is a liveness bound only.
    const stopped = await Promise.race([daemon.exited.then(() => 'stopped'), delay(20_000, 'still running', { ref: false })]);
    expect(stopped).toBe('stopped');
    expect(daemon.log.join('\n')).toContain(`the cache directory ${dataDir} was deleted while hoard had it open`);
    expect(await readdir(dataDir).catch((error: NodeJS.ErrnoException) => error.code)).toBe('ENOENT');
  });
  test('deleted while the daemon serves only reads: it notices all the same, says why and stops', async () => {
    const dir = await tempDir('hd-');
    const socketPath = join(dir, 's.sock');
    const dataDir = join(dir, 'data');
    const daemon = await startDaemonProcess({ socketPath, dataDir });
    const cache = await connect<string>({ socketPath, autoStart: false });
    onTestFinished(() => cache.close());
    await cache.set('k', 'v');
    let exited = false;
    void daemon.exited.then(() => (exited = true));
    // Reads in a loop, from the memory layer, none of which touches the directory, until the daemon goes away.
    const reading = (async () => {
      let reads = 0;
      for (; !exited; reads++) {
        const got = await cache.get('k').catch(() => undefined);
        if (!got) break;
        await got.release();
      }
      return reads;
    })();
    await rm(dataDir, { recursive: true });
    // Its periodic check (once a second) runs however busy the daemon is. 20 s is a liveness bound only.
    const stopped = await Promise.race([daemon.exited.then(() => 'stopped'), delay(20_000, 'still running', { ref: false })]);
    exited = true;
    expect(await reading).toBeGreaterThan(0);
    expect(stopped).toBe('stopped');
    expect(daemon.log.join('\n')).toContain(`the cache directory ${dataDir} was deleted while hoard had it open`);
    expect(await readdir(dataDir).catch((error: NodeJS.ErrnoException) => error.code)).toBe('ENOENT');
  });
});

/** `hoard daemon` run under strace, which writes each fdatasync and fsync of any of its threads to a file. */
async function tracedDaemon(options: { socketPath: string; dataDir: string; trace: string; extra: string[] }): Promise<ChildProcess> {
  const { socketPath, dataDir, trace, extra } = options;
  const child = spawn('strace', ['-f', '-qq', '-e', 'trace=fdatasync,fsync', '-o', trace, process.execPath, BIN, 'daemon', '--socket', socketPath, '--data-dir', dataDir, ...extra], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  onTestFinished(() => void child.kill('SIGKILL'));
  await new Promise<void>((resolve, reject) => {
    let stderr = '';
    child.stderr!.setEncoding('utf8').on('data', (chunk: string) => {
      stderr += chunk;
      if (stderr.includes('listening on')) resolve();
    });
    child.on('error', (error) => reject(new Error(`cannot run strace (install it: apt-get install strace): ${error.message}`)));
    child.on('exit', () => reject(new Error(`the traced daemon exited: ${stderr}`)));
  });
  return child;
}

describe('--sync', () => {
  // strace needs root here (ptrace), as CI has; .ci/run installs it.
  test.runIf(process.getuid?.() === 0)('a clear is flushed to the disk before it is acknowledged, as a set is', async () => {
    const dir = await tempDir('hd-');
    const socketPath = join(dir, 's.sock');
    const trace = join(dir, 'syncs.txt');
    await tracedDaemon({ socketPath, dataDir: join(dir, 'data'), trace, extra: ['--sync'] });
    // strace writes a call's line before the call returns, so before the daemon can answer.
    const syncs = async (): Promise<number> => (await readFile(trace, 'utf8')).split('\n').filter((line) => /\b(fdatasync|fsync)\(/.test(line)).length;
    const cache = await connect<number>({ socketPath, autoStart: false });
    onTestFinished(() => cache.close());
    const doomed = cache.withScope('doomed');
    for (let n = 0; n < 20; n++) await doomed.set(`k${n}`, n);
    let before = await syncs();
    await cache.set('one', 1);
    const perSet = (await syncs()) - before;
    before = await syncs();
    await doomed.clear();
    const perClear = (await syncs()) - before;
    expect({ perSet, perClear }).toEqual({ perSet: 1, perClear: 1 });
    await using gone = await doomed.get('k0');
    expect(gone.item).toBeNull();
  });
});

describe('storage faults', () => {
  // A small tmpfs is the full disk; mounting one needs root, which CI has.
  test.runIf(process.getuid?.() === 0)('on a full disk, set fails with CACHE_STORAGE and the daemon keeps serving reads', async () => {
    const dir = await tempDir('hd-');
    const disk = join(dir, 'disk');
    await mkdir(disk);
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=2m', 'tmpfs', disk]);
    onTestFinished(() => void execFileSync('umount', ['-l', disk]));
    // No size limit: the default one (a tenth of this 2 MiB disk) would refuse the values before the disk fills.
    const daemon = await startDaemon({ socketPath: join(dir, 's.sock'), dataDir: join(disk, 'data'), idleTimeoutMs: 0, maxSizeBytes: Infinity, log: () => {} });
    onTestFinished(() => daemon.close());
    const cache = await connect<Uint8Array>({ socketPath: join(dir, 's.sock'), codec: 'binary', autoStart: false });
    onTestFinished(() => cache.close());
    await cache.set('early', new Uint8Array([1, 2, 3]));
    let failure: unknown;
    for (let n = 0; n < 200 && !failure; n++) {
      await cache.set(`big${n}`, new Uint8Array(64 * 1024).fill(n)).catch((error: unknown) => (failure = error));
    }
    expect(failure).toMatchObject({ code: 'CACHE_STORAGE' });
    expect((failure as Error).message).toMatch(/no space left on device/i);
    // A replacement that fails leaves the old value, in memory as on disk.
    await expect(cache.set('early', new Uint8Array(64 * 1024).fill(9))).rejects.toMatchObject({ code: 'CACHE_STORAGE' });
    await using early = await cache.get('early');
    expect(await early.item!.value()).toEqual(new Uint8Array([1, 2, 3]));
    await using first = await cache.get('big0');
    expect((await first.item!.value()).length).toBe(64 * 1024);
    expect(await cache.status()).toMatchObject({ locksHeld: 2, waiters: 0 });
  });

  test('a damaged database: the daemon refuses to start naming the path and the remedy, and hoard repair recovers it', async () => {
    const dataDir = await damagedDataDir();
    const dir = await tempDir('hd-');
    const refused = await runHoard(['--socket', join(dir, 's.sock'), 'daemon', '--data-dir', dataDir]);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toContain(dataDir);
    expect(refused.stderr).toContain('hoard repair');

    const repaired = await runHoard(['repair', '--data-dir', dataDir]);
    expect(repaired).toMatchObject({ code: 0 });
    const daemon = await startDaemonProcess({ socketPath: join(dir, 's.sock'), dataDir });
    const cache = await connect<number>({ socketPath: daemon.socketPath, autoStart: false });
    onTestFinished(() => cache.close());
    for (let n = 0; n < 100; n++) {
      await using got = await cache.get(`k${n}`);
      expect(await got.item!.value()).toBe(n);
    }
  });

  test('CURRENT naming a manifest that is gone: the daemon refuses naming hoard repair, which recovers the data', async () => {
    const dataDir = join(await tempDir('hd-'), 'data');
    const cache = await LevelCache.open<number>(dataDir);
    for (let n = 0; n < 100; n++) await cache.set(`k${n}`, n);
    await cache.close();
    const current = (await readFile(join(dataDir, 'CURRENT'), 'utf8')).trim();
    await unlink(join(dataDir, current));
    const dir = await tempDir('hd-');
    const refused = await runHoard(['--socket', join(dir, 's.sock'), 'daemon', '--data-dir', dataDir]);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toContain(current);
    expect(refused.stderr).toContain(`hoard repair --data-dir ${dataDir}`);
    await expect(LevelCache.open(dataDir)).rejects.toMatchObject({ code: 'CACHE_CORRUPT' });

    expect(await runHoard(['repair', '--data-dir', dataDir])).toMatchObject({ code: 0 });
    const reopened = await LevelCache.open<number>(dataDir);
    onTestFinished(() => reopened.close());
    await using got = await reopened.get('k99');
    expect(await got.item!.value()).toBe(99);
  });

  test('hoard repair refuses a data directory that a daemon holds', async () => {
    const dir = await tempDir('hd-');
    const daemon = await startDaemonProcess({ socketPath: join(dir, 's.sock'), dataDir: join(dir, 'data') });
    const refused = await runHoard(['repair', '--data-dir', daemon.dataDir]);
    expect(refused.code).toBe(1);
    // It names the daemon and how to stop that one.
    expect(refused.stderr).toContain(`the hoard daemon (pid ${daemon.child.pid}) listening on ${daemon.socketPath}`);
    expect(refused.stderr).toContain(`hoard --socket ${daemon.socketPath} stop`);
    const cache = await connect({ socketPath: daemon.socketPath, autoStart: false });
    onTestFinished(() => cache.close());
    await cache.set('still', 'served');
  });

  test('a daemon started while hoard repair runs refuses, saying so; the repair finishes and a daemon serves its data after', async () => {
    const dir = await tempDir('hd-');
    const dataDir = join(dir, 'data');
    const cache = await LevelCache.open<number>(dataDir);
    for (let n = 0; n < 100; n++) await cache.set(`k${n}`, n);
    await cache.close();
    const socketPath = join(dir, 's.sock');
    stopDaemonsAfterTest(socketPath);
    // The repair runs here; in its window (after it has made sure nobody holds the directory, before LevelDB's repair
    // runs) a daemon starts in another process, as a client's connect() would start one.
    let during: { outcome: 'listening' | number | null; stderr: string } | undefined;
    let connected: unknown;
    let inProcess: unknown;
    let otherProcess: string | undefined;
    const repaired = await repairLevelStore(dataDir, {
      beforeRepair: async () => {
        during = await tryDaemon(socketPath, dataDir);
        connected = await connect({ socketPath, dataDir }).catch((error: unknown) => error);
        inProcess = await LevelCache.open(dataDir).catch((error: unknown) => error);
        otherProcess = (
          await runModule(
            `import { LevelCache } from ${JSON.stringify(join(PROJECT_ROOT, 'dist/src/index.js'))};
             await LevelCache.open(process.argv.at(-1)).then(() => console.log('opened'), (error) => console.log(error.code));`,
            [dataDir],
          )
        ).stdout.trim();
      },
    }).catch((error: unknown) => error);
    expect(repaired).toBeUndefined();
    expect(during?.outcome).toBe(1);
    const repairing = `hoard repair (pid ${process.pid}) is repairing the cache directory ${dataDir}`;
    expect(during?.stderr).toContain(repairing);
    // A client that finds no daemon and starts one is told at once, not after its start timeout.
    expect(connected).toMatchObject({ code: 'CACHE_DAEMON_START_FAILED' });
    expect((connected as Error).message).toContain(repairing);
    expect(inProcess).toMatchObject({ code: 'CACHE_LOCKED' });
    expect(otherProcess).toBe('CACHE_LOCKED');

    const daemon = await startDaemonProcess({ socketPath, dataDir });
    const remote = await connect<number>({ socketPath: daemon.socketPath, autoStart: false });
    onTestFinished(() => remote.close());
    for (let n = 0; n < 100; n++) {
      await using got = await remote.get(`k${n}`);
      expect(await got.item!.value()).toBe(n);
    }
  });

  // Running the daemon as another user needs root, which CI has.
  test.runIf(process.getuid?.() === 0)('an unreadable database: the daemon refuses to start naming the path and the remedy', async () => {
    const dir = await tempDir('hd-');
    const dataDir = join(dir, 'data');
    await (await LevelCache.open(dataDir)).close();
    await chmod(dataDir, 0o700);
    const socketDir = join(dir, 'run');
    await mkdir(socketDir, { mode: 0o700 });
    await chown(socketDir, 65534, 65534);
    await chmod(dir, 0o755);
    const result = await new Promise<{ code: number | null; stderr: string }>((resolve) => {
      const child = spawn('setpriv', ['--reuid', '65534', '--regid', '65534', '--clear-groups', process.execPath, BIN, 'daemon', '--socket', join(socketDir, 's.sock'), '--data-dir', dataDir], {
        stdio: ['ignore', 'ignore', 'pipe'],
      });
      let stderr = '';
      child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
      child.on('close', (code) => resolve({ code, stderr }));
    });
    expect(result.code).toBe(1);
    expect(result.stderr).toContain(dataDir);
    expect(result.stderr).toMatch(/readable and writable by you/);
  });
});
