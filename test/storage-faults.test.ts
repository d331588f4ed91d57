import { execFileSync, spawn } from 'node:child_process';
import { chmod, chown, mkdir, readdir, readFile, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, onTestFinished, test } from 'vitest';
import { connect } from '../client/index.js';
import { startDaemon } from '../daemon/index.js';
import { LevelCache } from '../src/index.js';
import { repairLevelStore } from '../src/level/repair.js';
import { PROJECT_ROOT, runModule } from './support/child.js';
import { BIN, runHoard, startDaemonProcess, stopDaemonsAfterTest } from './support/processes.js';
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

describe('storage faults', () => {
  // A small tmpfs is the full disk; mounting one needs root, which CI has.
  test.runIf(process.getuid?.() === 0)('on a full disk, set fails with CACHE_STORAGE and the daemon keeps serving reads', async () => {
    const dir = await tempDir('hd-');
    const disk = join(dir, 'disk');
    await mkdir(disk);
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=2m', 'tmpfs', disk]);
    onTestFinished(() => void execFileSync('umount', ['-l', disk]));
    const daemon = await startDaemon({ socketPath: join(dir, 's.sock'), dataDir: join(disk, 'data'), idleTimeoutMs: 0, log: () => {} });
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
