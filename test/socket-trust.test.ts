import { spawn } from 'node:child_process';
import { chmod, chown, lstat, mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { createInterface } from 'node:readline';
import { join } from 'node:path';
import { describe, expect, onTestFinished, test } from 'vitest';
import { connect } from '../client/index.js';
import { startDaemon } from '../daemon/index.js';
import { trustedSocketPath } from '../src/wire/trusted-socket-path.js';
import { BIN, daemonPids, runHoard, stopDaemonsAfterTest } from './support/processes.js';
import { tempDir } from './support/temp-dir.js';

const NOBODY = 65534;
const IS_ROOT = process.getuid?.() === 0;
const UID = process.getuid?.() ?? 0;

/** The `setpriv` arguments that run a program as user nobody. */
const AS_NOBODY = ['--reuid', String(NOBODY), '--regid', String(NOBODY), '--clear-groups'];

/** Runs a Node script as user nobody and resolves once it has exited; rejects with its stderr when it fails. */
function nodeAsNobody(source: string, args: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn('setpriv', [...AS_NOBODY, process.execPath, '-e', source, '--', ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
    child.on('close', (code) => (code === 0 ? resolve() : reject(new Error(`as nobody: ${stderr}`))));
  });
}

/**
 * What another local user does when the socket's place is free: a directory (or a symbolic link) of theirs at the
 * name the user's client will look for, and their own `hoard daemon` in it, its socket open to everyone.
 */
async function impostorDaemon(options: { socketDir: string; dataDir: string }): Promise<{ pid: number; socketPath: string }> {
  const socketPath = join(options.socketDir, 'hoard.sock');
  await nodeAsNobody(`require('node:fs').mkdirSync(process.argv.at(-1), { mode: 0o700 })`, [options.socketDir]);
  const child = spawn('setpriv', [...AS_NOBODY, process.execPath, BIN, 'daemon', '--socket', socketPath, '--data-dir', options.dataDir], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  onTestFinished(() => void child.kill('SIGKILL'));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const log: string[] = [];
  await new Promise<void>((resolve, reject) => {
    createInterface({ input: child.stderr }).on('line', (line) => {
      log.push(line);
      if (line.includes('listening on')) resolve();
    });
    void exited.then(() => reject(new Error(`the impostor exited: ${log.join('\n')}`)));
  });
  // Its socket open to everyone, so that any user's client can reach it (root's always can).
  await nodeAsNobody(`require('node:fs').chmodSync(process.argv.at(-1), 0o666)`, [socketPath]);
  return { pid: child.pid!, socketPath };
}

/** A shared temporary directory like /tmp: owned by root, writable by everyone, sticky. */
async function sharedTemp(): Promise<string> {
  const shared = await tempDir('hd-');
  await chmod(shared, 0o1777);
  return shared;
}

describe('the client trusts a socket only where no one else could have put it', () => {
  // Another user, and handing a directory to one, need root: CI runs as root, with setpriv from util-linux.
  test.runIf(IS_ROOT)('another user\u2019s daemon at the default socket path under the shared temp dir is refused, and none is started', async () => {
    const shared = await sharedTemp();
    // With XDG_RUNTIME_DIR unset, the default socket is <tmpdir>/hoard-<uid>/hoard.sock: nobody took that name first.
    const impostor = await impostorDaemon({ socketDir: join(shared, `hoard-${UID}`), dataDir: join(shared, 'theirs') });
    stopDaemonsAfterTest(impostor.socketPath);

    const refused = await connect({ socketPath: impostor.socketPath, autoStart: false }).catch((e: unknown) => e);
    expect(refused).toMatchObject({ code: 'CACHE_UNSAFE_DIRECTORY' });
    expect((refused as Error).message).toContain(`belongs to user ${NOBODY}`);

    // The command line finds the same default path, and refuses it too, also where it would start a daemon.
    const env = { ...process.env, TMPDIR: shared, XDG_RUNTIME_DIR: '', HOARD_SOCKET: '' };
    const status = await runHoard(['status'], undefined, env);
    expect(status.code).toBe(1);
    expect(status.stderr.trim().split('\n')).toHaveLength(1);
    expect(status.stderr).toContain(`belongs to user ${NOBODY}`);
    const set = await runHoard(['set', 'secret', 'for my eyes only'], undefined, env);
    expect(set.code).toBe(1);
    expect(set.stderr).toContain(`belongs to user ${NOBODY}`);
    expect(await daemonPids(impostor.socketPath)).toEqual([impostor.pid]);
  });

  test.runIf(IS_ROOT)('a symbolic link at the socket directory\u2019s name is refused by the client and by the daemon', async () => {
    const shared = await sharedTemp();
    // The link is another user's, and points at a directory of the user's own, so that every check that follows it passes.
    const mine = await tempDir('hd-');
    const link = join(shared, `hoard-${UID}`);
    await nodeAsNobody(`require('node:fs').symlinkSync(process.argv.at(-2), process.argv.at(-1))`, [mine, link]);
    const daemonThere = await startDaemon({ socketPath: join(link, 's.sock'), dataDir: join(mine, 'data'), idleTimeoutMs: 0, log: () => {} }).catch(
      (e: unknown) => e,
    );
    if (!(daemonThere instanceof Error)) onTestFinished(() => (daemonThere as { close(): Promise<void> }).close());
    expect(daemonThere).toMatchObject({ code: 'CACHE_UNSAFE_DIRECTORY' });
    expect((daemonThere as Error).message).toContain('symbolic link');

    // A daemon of the user's own, reached through the link: whoever owns the link could point it elsewhere.
    const daemon = await startDaemon({ socketPath: join(mine, 's.sock'), dataDir: join(mine, 'data'), idleTimeoutMs: 0, log: () => {} });
    onTestFinished(() => daemon.close());
    const refused = await connect({ socketPath: join(link, 's.sock'), autoStart: false }).catch((e: unknown) => e);
    expect(refused).toMatchObject({ code: 'CACHE_UNSAFE_DIRECTORY' });
    expect((refused as Error).message).toContain('symbolic link');
  });

  test.runIf(IS_ROOT)('auto-start starts no daemon into another user\u2019s directory', async () => {
    const shared = await sharedTemp();
    const theirs = join(shared, `hoard-${UID}`);
    await nodeAsNobody(`require('node:fs').mkdirSync(process.argv.at(-1), { mode: 0o777 })`, [theirs]);
    const socketPath = join(theirs, 'hoard.sock');
    stopDaemonsAfterTest(socketPath);
    const refused = await connect({ socketPath, dataDir: join(await tempDir('hd-'), 'data') }).catch((e: unknown) => e);
    expect(refused).toMatchObject({ code: 'CACHE_UNSAFE_DIRECTORY' });
    expect((refused as Error).message).toContain(`belongs to user ${NOBODY}`);
    expect(await daemonPids(socketPath)).toEqual([]);
    await expect(lstat(socketPath)).rejects.toMatchObject({ code: 'ENOENT' });
  });

  test.runIf(IS_ROOT)('a directory on the way that another user could rename is refused; a sticky one is not', async () => {
    // Writable by everyone and not sticky: anyone may rename the user's directory in it and put their own in its place.
    const open = await tempDir('hd-');
    await chmod(open, 0o777);
    const socketDir = join(open, 'run');
    await mkdir(socketDir, { mode: 0o700 });
    const refused = await startDaemon({ socketPath: join(socketDir, 's.sock'), dataDir: join(open, 'data'), log: () => {} }).catch((e: unknown) => e);
    if (!(refused instanceof Error)) onTestFinished(() => (refused as { close(): Promise<void> }).close());
    expect(refused).toMatchObject({ code: 'CACHE_UNSAFE_DIRECTORY' });
    expect((refused as Error).message).toMatch(new RegExp(`^${open}, on the way to .*, is writable by others and not sticky`));
    const clientRefused = await connect({ socketPath: join(socketDir, 's.sock'), autoStart: false }).catch((e: unknown) => e);
    expect(clientRefused).toMatchObject({ code: 'CACHE_UNSAFE_DIRECTORY' });
    // The same directory made sticky (as /tmp is): others may add names to it, but not take the user's away.
    await chmod(open, 0o1777);
    const daemon = await startDaemon({ socketPath: join(socketDir, 's.sock'), dataDir: join(open, 'data'), idleTimeoutMs: 0, log: () => {} });
    onTestFinished(() => daemon.close());
    const cache = await connect<string>({ socketPath: join(socketDir, 's.sock'), autoStart: false });
    onTestFinished(() => cache.close());
    await cache.set('k', 'v');
  });

  test.runIf(IS_ROOT)('a socket that is not the user\u2019s own socket is refused: another user\u2019s, or a symbolic link', async () => {
    const dir = await tempDir('hd-');
    const socketPath = join(dir, 's.sock');
    const daemon = await startDaemon({ socketPath, dataDir: join(dir, 'data'), idleTimeoutMs: 0, log: () => {} });
    onTestFinished(() => daemon.close());
    const link = join(dir, 'link.sock');
    await symlink(socketPath, link);
    const viaLink = await connect({ socketPath: link, autoStart: false }).catch((e: unknown) => e);
    expect(viaLink).toMatchObject({ code: 'CACHE_UNSAFE_DIRECTORY' });
    expect((viaLink as Error).message).toContain('symbolic link');
    await chown(socketPath, NOBODY, NOBODY);
    const theirs = await connect({ socketPath, autoStart: false }).catch((e: unknown) => e);
    expect(theirs).toMatchObject({ code: 'CACHE_UNSAFE_DIRECTORY' });
    expect((theirs as Error).message).toContain(`belongs to user ${NOBODY}`);
  });

  test('a socket directory writable by others, or a regular file at the socket path, is refused before any daemon starts', async () => {
    const dir = await tempDir('hd-');
    const open = join(dir, 'open');
    await mkdir(open);
    await chmod(open, 0o777);
    stopDaemonsAfterTest(join(open, 's.sock'));
    const refused = await connect({ socketPath: join(open, 's.sock'), dataDir: join(dir, 'data') }).catch((e: unknown) => e);
    expect(refused).toMatchObject({ code: 'CACHE_UNSAFE_DIRECTORY' });
    expect((refused as Error).message).toContain(`chmod 700 ${open}`);
    expect(await daemonPids(join(open, 's.sock'))).toEqual([]);
    const notes = join(dir, 'notes.txt');
    await writeFile(notes, 'my notes\n');
    stopDaemonsAfterTest(notes);
    const file = await connect({ socketPath: notes, dataDir: join(dir, 'data') }).catch((e: unknown) => e);
    expect(file).toMatchObject({ code: 'CACHE_UNSAFE_DIRECTORY' });
    expect((file as Error).message).toContain('a regular file, not a socket');
    expect((await lstat(notes)).isFile()).toBe(true);
  });

  test('a socket directory that is missing is no daemon (ENOENT), never a path to connect to unchecked', async () => {
    // Whoever makes the directory after the check (in a sticky /tmp, anyone) would own what the client then reached.
    const dir = await tempDir('hd-');
    for (const socketPath of [join(dir, 'run', 's.sock'), join(dir, 'gone', 'run', 's.sock')]) {
      await expect(trustedSocketPath(socketPath)).rejects.toMatchObject({ code: 'ENOENT' });
      const refused = await connect({ socketPath, autoStart: false }).catch((e: unknown) => e);
      expect(refused).toMatchObject({ code: 'CACHE_NO_DAEMON' });
    }
    // A checked directory with no socket in it: nobody can put one there but the user, so the path is given back.
    await mkdir(join(dir, 'run'), { mode: 0o700 });
    expect(await trustedSocketPath(join(dir, 'run', 's.sock'))).toBe(join(dir, 'run', 's.sock'));
  });

  test('the user\u2019s own places are trusted: a socket directory readable by others, a path through a link of the user\u2019s', async () => {
    const dir = await tempDir('hd-');
    const run = join(dir, 'run');
    await mkdir(run);
    await chmod(run, 0o755);
    const daemon = await startDaemon({ socketPath: join(run, 's.sock'), dataDir: join(dir, 'data'), idleTimeoutMs: 0, log: () => {} });
    onTestFinished(() => daemon.close());
    const linked = await mkdtemp(join(dir, 'l-'));
    await rm(linked, { recursive: true });
    await symlink(dir, linked);
    const cache = await connect<string>({ socketPath: join(linked, 'run', 's.sock'), autoStart: false });
    onTestFinished(() => cache.close());
    await cache.set('k', 'v');
    expect((await cache.status()).socketPath).toBe(join(run, 's.sock'));
  });
});
