import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { chmod, chown, lstat, mkdir, readdir, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, onTestFinished, test } from 'vitest';
import { connect } from '../client/index.js';
import { startDaemon } from '../daemon/index.js';
import { LevelCache } from '../src/index.js';
import { startTestDaemon } from './support/daemon.js';
import { runHoard, startDaemonProcess } from './support/processes.js';
import { tempDir } from './support/temp-dir.js';

const NOBODY = 65534;
const IS_ROOT = process.getuid?.() === 0;

/** Runs `node -e source` as user nobody through setpriv, and resolves to what it printed. */
function asNobody(source: string, args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn('setpriv', ['--reuid', String(NOBODY), '--regid', String(NOBODY), '--clear-groups', process.execPath, '-e', source, '--', ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => (out += chunk));
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (out += chunk));
    child.on('error', reject);
    child.on('close', () => resolve(out.trim()));
  });
}

describe('who may connect', () => {
  // Switching to another user, and giving a directory to one, needs root: CI runs as root (with setpriv from util-linux).
  test.runIf(IS_ROOT)('the socket directory is 0700 and owned by the user, and another user cannot connect', async () => {
    const { socketPath } = await startTestDaemon();
    const info = await stat(join(socketPath, '..'));
    expect(info.mode & 0o777).toBe(0o700);
    expect(info.uid).toBe(process.getuid!());
    expect(await connectAsNobody(socketPath)).toBe('EACCES');
  });

  test.runIf(IS_ROOT)('the socket itself is 0600: even in a directory others may enter, another user cannot connect', async () => {
    const dir = await tempDir('hd-');
    await chmod(dir, 0o755);
    const run = join(dir, 'run');
    await mkdir(run, { mode: 0o755 });
    await chmod(run, 0o755);
    const daemon = await startDaemon({ socketPath: join(run, 's.sock'), dataDir: join(dir, 'data'), idleTimeoutMs: 0, log: () => {} });
    onTestFinished(() => daemon.close());
    expect((await stat(join(run, 's.sock'))).mode & 0o777).toBe(0o600);
    expect(await connectAsNobody(join(run, 's.sock'))).toBe('EACCES');
    // The same socket opened up lets nobody in: it is the socket's mode that kept them out.
    await chmod(join(run, 's.sock'), 0o666);
    expect(await connectAsNobody(join(run, 's.sock'))).toBe('connected');
  });
});

/** Tries to connect to `socketPath` as user nobody; resolves to 'connected' or the error code. */
function connectAsNobody(socketPath: string): Promise<string> {
  return asNobody(
    `const socket = require('node:net').connect(process.argv.at(-1));
     socket.on('connect', () => { console.log('connected'); socket.destroy(); });
     socket.on('error', (error) => console.log(error.code));`,
    [socketPath],
  );
}

describe('where the daemon refuses to listen', () => {
  test.runIf(IS_ROOT)('a socket directory owned by someone else is refused', async () => {
    const dir = await tempDir('hd-');
    const theirs = join(dir, 'theirs');
    await mkdir(theirs, { mode: 0o700 });
    await chown(theirs, NOBODY, NOBODY);
    const refused = await startDaemon({ socketPath: join(theirs, 's.sock'), dataDir: join(dir, 'data'), log: () => {} }).catch((e: unknown) => e);
    expect(refused).toMatchObject({ code: 'CACHE_UNSAFE_DIRECTORY' });
    expect((refused as Error).message).toMatch(/belongs to user 65534/);
  });

  test('a socket directory writable by its group is refused', async () => {
    const dir = await tempDir('hd-');
    const shared = join(dir, 'shared');
    await mkdir(shared);
    await chmod(shared, 0o770);
    await expect(startDaemon({ socketPath: join(shared, 's.sock'), dataDir: join(dir, 'data'), log: () => {} })).rejects.toMatchObject({
      code: 'CACHE_UNSAFE_DIRECTORY',
    });
  });
});

/** Every path under `directory` (itself included) with its permission bits, from lstat. */
async function modesUnder(directory: string): Promise<Map<string, { mode: number; isDirectory: boolean }>> {
  const modes = new Map<string, { mode: number; isDirectory: boolean }>();
  const visit = async (path: string): Promise<void> => {
    const info = await lstat(path);
    modes.set(path, { mode: info.mode & 0o7777, isDirectory: info.isDirectory() });
    if (info.isDirectory()) for (const name of await readdir(path)) await visit(join(path, name));
  };
  await visit(directory);
  return modes;
}

/** The paths under `directory` whose mode is not 0700 (directories) or 0600 (files), with their modes in octal. */
async function notPrivate(directory: string): Promise<string[]> {
  return [...(await modesUnder(directory))]
    .filter(([, { mode, isDirectory }]) => mode !== (isDirectory ? 0o700 : 0o600))
    .map(([path, { mode }]) => `${path} ${mode.toString(8)}`);
}

/** Tries, as user nobody, to read each file and list each directory; resolves to what each attempt got. */
async function readAsNobody(paths: string[]): Promise<Record<string, string>> {
  const out = await asNobody(
    `const fs = require('node:fs');
     const result = {};
     for (const path of process.argv.slice(1)) {
       try { result[path] = fs.statSync(path).isDirectory() ? 'listed ' + fs.readdirSync(path).join(',') : 'read ' + fs.readFileSync(path, 'latin1'); }
       catch (error) { result[path] = error.code; }
     }
     console.log(JSON.stringify(result));`,
    paths,
  );
  return JSON.parse(out) as Record<string, string>;
}

/** The files and directories under `directory`, for another user to try. */
async function allPaths(directory: string): Promise<string[]> {
  return [...(await modesUnder(directory)).keys()];
}

describe('who may read the data', () => {
  // The daemon's own process creates everything for its user only; other users reach nothing.
  test.runIf(IS_ROOT)('a daemon makes its data directory 0700 and every file 0600 (a value committed from a reserved file 0400), LevelDB\'s included, through writes, large values, file commits and compactions', async () => {
    const dir = await tempDir('hd-');
    await chmod(dir, 0o755);
    const dataDir = join(dir, 'data');
    const daemon = await startDaemonProcess({ socketPath: join(dir, 's.sock'), dataDir });
    const cache = await connect<Uint8Array>({ socketPath: daemon.socketPath, codec: 'binary', autoStart: false });
    // No part of it is in a key: LevelDB's compression would turn a repeat into a reference to the key's bytes.
    const secret = Buffer.from('the-secret-value-Zq7Xw');
    await cache.set('small', secret);
    await cache.set('large', new Uint8Array(64 * 1024).fill(0x41));
    // A value committed from a reserved file: the file itself becomes the value's, read-only (0400), in temp/ (0700).
    const reserved = await cache.reserveFile();
    await writeFile(reserved.path, new Uint8Array(64 * 1024).fill(0x43));
    await cache.setFile('committed', reserved.path);
    const committedPath = await (async () => {
      await using got = await cache.get('committed');
      return await got.item!.path();
    })();
    // About 14 MiB of values under the large-value size: LevelDB compacts its 4 MiB write buffer into a table at least
    // twice, each time in a new table file and a new log file, made long after the open. A write batch lands whole in
    // the buffer it finds under 4 MiB, so under load (larger batches) a buffer may hold nearly 5 MiB before it is
    // written out: 10 MiB was once one flush short.
    const filler = new Uint8Array(16 * 1024).fill(0x42);
    for (let n = 0; n < 900; n += 50) await Promise.all(Array.from({ length: 50 }, (_, k) => cache.set(`filler${n + k}`, filler)));
    // Stopping waits for LevelDB's compactions to end, so that the files below stay put.
    await cache.close();
    daemon.child.kill('SIGTERM');
    expect(await daemon.exited).toBe(0);
    const names = await readdir(dataDir);
    // Two tables were flushed (the LOG says so, below); a compaction may have merged them into one since.
    expect(names.filter((name) => name.endsWith('.ldb')).length).toBeGreaterThanOrEqual(1);
    expect(names).not.toContain('000003.log');
    expect((await readFile(join(dataDir, 'LOG'), 'utf8')).match(/Level-0 table #\d+: \d+ bytes OK/g)?.length).toBeGreaterThanOrEqual(2);
    expect(names).toEqual(expect.arrayContaining(['CURRENT', 'LOCK', 'LOG', 'blobs', 'instance-lock', 'temp']));
    expect(await notPrivate(dataDir)).toEqual([`${committedPath} 400`]);

    // Another user reaches nothing: not the directory, not LevelDB's log and tables, not the file of a large value.
    const attempts = await readAsNobody(await allPaths(dataDir));
    expect(Object.keys(attempts).length).toBeGreaterThan(10);
    for (const [path, got] of Object.entries(attempts)) expect({ path, got }).toEqual({ path, got: 'EACCES' });
    // The value was there to be read: the daemon's own user finds it in LevelDB's log or tables.
    const files = names.filter((name) => name.endsWith('.log') || name.endsWith('.ldb'));
    const contents = await Promise.all(files.map((name) => readFile(join(dataDir, name))));
    expect(contents.some((bytes) => bytes.includes(secret))).toBe(true);
  });

  test.runIf(IS_ROOT)('a data directory that others could read is made private when the daemon opens it, and the log says so', async () => {
    const dir = await tempDir('hd-');
    await chmod(dir, 0o755);
    const dataDir = join(dir, 'data');
    const before = await LevelCache.open<string>(dataDir);
    await before.set('small', 'the-small-secret-value');
    await before.set('large', 'x'.repeat(64 * 1024));
    await before.close();
    // As an older hoard left it: directories 0755 and LevelDB's files 0644 (the files of large values were 0600
    // already, and hoard does not list them: there may be millions).
    for (const [path, { isDirectory }] of await modesUnder(dataDir)) {
      if (isDirectory) await chmod(path, 0o755);
      else if (!path.startsWith(join(dataDir, 'blobs'))) await chmod(path, 0o644);
    }
    expect((await readAsNobody([join(dataDir, 'CURRENT')]))[join(dataDir, 'CURRENT')]).toMatch(/^read MANIFEST-/);

    const daemon = await startDaemonProcess({ socketPath: join(dir, 's.sock'), dataDir });
    const warning = daemon.log.find((line) => line.includes('warning:'));
    expect(warning).toContain(`other users could read or enter ${dataDir} (mode 0755)`);
    expect(warning).toContain('they are private now');
    expect(await notPrivate(dataDir)).toEqual([]);
    for (const [path, got] of Object.entries(await readAsNobody(await allPaths(dataDir)))) expect({ path, got }).toEqual({ path, got: 'EACCES' });
  });

  test.runIf(IS_ROOT)('a LevelCache in a program makes its directory 0700 and its own files private, whatever the program\'s umask', async () => {
    const dir = await tempDir('hd-');
    await chmod(dir, 0o755);
    const dataDir = join(dir, 'data');
    const cache = await LevelCache.open<string>(dataDir);
    await cache.set('small', 'the-small-secret-value');
    await cache.set('large', 'x'.repeat(64 * 1024));
    const modes = await modesUnder(dataDir);
    expect(modes.get(dataDir)?.mode).toBe(0o700);
    // The directories of large values and their files are hoard's own; LevelDB's files take the program's umask,
    // which hoard leaves alone, inside the private directory.
    const blobs = [...modes].filter(([path]) => path.startsWith(join(dataDir, 'blobs')));
    expect(blobs.length).toBe(3);
    for (const [path, { mode, isDirectory }] of blobs) expect({ path, mode }).toEqual({ path, mode: isDirectory ? 0o700 : 0o600 });
    const log = (await readdir(dataDir)).find((name) => name.endsWith('.log'))!;
    expect(await readAsNobody([join(dataDir, log), join(dataDir, 'blobs')])).toEqual({ [join(dataDir, log)]: 'EACCES', [join(dataDir, 'blobs')]: 'EACCES' });
    await cache.close();

    // Opened up by someone, the directory is made private again at the next open, and the program is warned.
    await chmod(dataDir, 0o755);
    const warned = once(process, 'warning');
    const again = await LevelCache.open<string>(dataDir);
    onTestFinished(() => again.close());
    const [warning] = (await warned) as [Error & { code?: string }];
    expect(warning.code).toBe('HOARD_DATA_DIR_NOT_PRIVATE');
    expect(warning.message).toContain(dataDir);
    expect((await stat(dataDir)).mode & 0o777).toBe(0o700);
  });

  test('startDaemon in a program with umask 022 makes a fresh data directory private without warning of it, at every start', async () => {
    const previous = process.umask(0o022);
    onTestFinished(() => void process.umask(previous));
    const dir = await tempDir('hd-');
    const dataDir = join(dir, 'data');
    for (const round of [1, 2]) {
      const lines: string[] = [];
      const daemon = await startDaemon({ socketPath: join(dir, 's.sock'), dataDir, idleTimeoutMs: 0, log: (line) => lines.push(line) });
      await daemon.close();
      // Before, each start said other users could read LevelDB's files, which its own open had just made 0644.
      expect({ round, warnings: lines.filter((line) => line.startsWith('warning')) }).toEqual({ round, warnings: [] });
      expect((await stat(dataDir)).mode & 0o777).toBe(0o700);
    }
  });

  test('the daemon\'s log file is 0600 in a 0700 directory, and one an earlier version left readable is made 0600', async () => {
    const dir = await tempDir('hd-');
    const runOnce = (logFile: string) =>
      runHoard(['--socket', join(dir, 's.sock'), 'daemon', '--data-dir', join(dir, 'data'), '--log-file', logFile, '--idle-timeout', '1ms']);
    const fresh = join(dir, 'state', 'hoard.log');
    expect(await runOnce(fresh)).toMatchObject({ code: 0 });
    expect((await stat(fresh)).mode & 0o777).toBe(0o600);
    expect((await stat(join(dir, 'state'))).mode & 0o777).toBe(0o700);
    const old = join(dir, 'old.log');
    await writeFile(old, 'an earlier daemon\'s lines\n', { mode: 0o644 });
    await chmod(old, 0o644);
    expect(await runOnce(old)).toMatchObject({ code: 0 });
    expect((await stat(old)).mode & 0o777).toBe(0o600);
    expect(await readFile(old, 'utf8')).toMatch(/listening on/);
  });
});
