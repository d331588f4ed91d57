import { spawn } from 'node:child_process';
import { chmod, chown, mkdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, onTestFinished, test } from 'vitest';
import { startDaemon } from '../daemon/index.js';
import { startTestDaemon } from './support/daemon.js';
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
