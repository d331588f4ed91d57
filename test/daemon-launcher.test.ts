import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, onTestFinished, test } from 'vitest';
import { checkDaemonLauncher, connect, daemonEntry, daemonSpawn, describeSpawn } from '../client/connect.js';
import { connectStdio } from '../client/connect-stdio.js';
import { LevelCache } from '../src/index.js';
import { DAEMON_NODE_FLAGS } from '../src/wire/paths.js';
import { autoStartPaths, startDaemonProcess } from './support/processes.js';

const ARGS = ['--socket', '/tmp/h/s.sock'];
const NODE = { execPath: '/usr/bin/node', versions: { node: '20.20.2' } };
// What the extension host of an editor built on Electron looks like: its binary is Electron's, not Node's.
const ELECTRON = { execPath: '/opt/editor/editor', versions: { node: '20.18.0', electron: '34.2.0' } };

describe('daemonSpawn', () => {
  test('by default, runs the installed entry with this Node and hoard\u2019s Node flags', () => {
    expect(daemonSpawn(undefined, ARGS, NODE)).toEqual({
      file: '/usr/bin/node',
      args: [...DAEMON_NODE_FLAGS, daemonEntry(), ...ARGS],
      env: {},
    });
  });

  test('under Electron, runs the entry with Electron\u2019s binary as Node', () => {
    expect(daemonSpawn({ entry: '/ext/hoard/main.js' }, ARGS, ELECTRON)).toEqual({
      file: '/opt/editor/editor',
      args: [...DAEMON_NODE_FLAGS, '/ext/hoard/main.js', ...ARGS],
      env: { ELECTRON_RUN_AS_NODE: '1' },
    });
    expect(daemonSpawn(undefined, ARGS, ELECTRON).env).toEqual({ ELECTRON_RUN_AS_NODE: '1' });
  });

  test('nodePath runs the entry with that Node, under Electron too', () => {
    expect(daemonSpawn({ entry: '/ext/hoard/main.js', nodePath: '/usr/local/bin/node' }, ARGS, ELECTRON)).toEqual({
      file: '/usr/local/bin/node',
      args: [...DAEMON_NODE_FLAGS, '/ext/hoard/main.js', ...ARGS],
      env: {},
    });
  });

  test('a command runs as given, with the daemon\u2019s options after its own arguments', () => {
    expect(daemonSpawn({ command: ['hoard', 'daemon', '--sync'] }, ARGS, ELECTRON)).toEqual({
      file: 'hoard',
      args: ['daemon', '--sync', ...ARGS],
      env: {},
    });
  });

  test('describeSpawn writes a command line a shell would run', () => {
    expect(describeSpawn({ file: '/opt/my editor/editor', args: ['--x', "it's"], env: { ELECTRON_RUN_AS_NODE: '1' } })).toBe(
      "ELECTRON_RUN_AS_NODE=1 '/opt/my editor/editor' --x 'it'\\''s'",
    );
  });
});

test('a daemon option of the wrong shape is a TypeError', () => {
  for (const launcher of [null, 'hoard', { entry: '' }, { nodePath: 7 }, { command: [] }, { command: 'hoard daemon' }, { command: [''] }, { command: ['hoard'], entry: '/x.js' }]) {
    expect(() => checkDaemonLauncher(launcher), JSON.stringify(launcher)).toThrow(TypeError);
  }
  for (const launcher of [undefined, {}, { entry: '/x.js' }, { entry: '/x.js', nodePath: '/n' }, { nodePath: '/n' }, { command: ['hoard', 'daemon'] }]) {
    expect(() => checkDaemonLauncher(launcher)).not.toThrow();
  }
});

describe('a daemon that cannot start is reported with the command line that ran', () => {
  test('connect, a program that does not exist', async () => {
    const { socketPath } = await autoStartPaths();
    const error = await connect({ socketPath, daemon: { command: ['/nonexistent/hoard', 'daemon'] } }).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: 'CACHE_DAEMON_START_FAILED' });
    expect((error as Error).message).toContain('ENOENT');
    expect((error as Error).message).toContain(`/nonexistent/hoard daemon --socket ${socketPath}`);
  });

  test('connect, a program that exits without a word', async () => {
    const { socketPath } = await autoStartPaths();
    const error = await connect({ socketPath, daemon: { command: [process.execPath, '-e', 'process.exit(3)', '--'] } }).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: 'CACHE_DAEMON_START_FAILED' });
    expect((error as Error).message).toContain('status 3');
    expect((error as Error).message).toContain(`${process.execPath} -e 'process.exit(3)' -- --socket ${socketPath}`);
  });

  test('connect, an entry that is no daemon', async () => {
    const { socketPath } = await autoStartPaths();
    const error = await connect({ socketPath, daemon: { entry: '/nonexistent/main.js' } }).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: 'CACHE_DAEMON_START_FAILED' });
    expect((error as Error).message).toContain(`${process.execPath} ${DAEMON_NODE_FLAGS.join(' ')} /nonexistent/main.js --socket ${socketPath}`);
  });

  test('connectStdio, a program that does not exist', async () => {
    const error = await connectStdio({ daemon: { command: ['/nonexistent/hoard', 'daemon'] } }).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: 'CACHE_DAEMON_START_FAILED' });
    expect((error as Error).message).toContain('ENOENT');
    expect((error as Error).message).toContain('/nonexistent/hoard daemon --stdio');
  });
});

/** The daemon's own entry behind a wrapper that counts the daemons started through it: in `spawns`, a pid a line. */
async function countingEntry(dir: string): Promise<{ entry: string; spawns: () => Promise<string[]> }> {
  const spawns = join(dir, 'spawns');
  const entry = join(dir, 'counting-daemon.cjs');
  await writeFile(
    entry,
    `require('node:fs').appendFileSync(${JSON.stringify(spawns)}, process.pid + '\\n');
     require(${JSON.stringify(daemonEntry())}).runDaemonMain(process.argv.slice(2)).then((code) => { process.exitCode = code; });`,
  );
  return { entry, spawns: async () => (await readFile(spawns, 'utf8').catch(() => '')).trim().split('\n').filter(Boolean) };
}

describe('a data directory held elsewhere', () => {
  test('by a daemon on another socket: connect starts one daemon at most, and fails at once with CACHE_LOCKED naming its socket and pid', async () => {
    const first = await autoStartPaths();
    const holder = await startDaemonProcess({ socketPath: first.socketPath, dataDir: first.dataDir });
    const { dir, socketPath } = await autoStartPaths();
    const counting = await countingEntry(dir);
    const refused = await connect({ socketPath, dataDir: first.dataDir, daemon: { entry: counting.entry } }).catch((e: unknown) => e);
    expect(await counting.spawns()).toHaveLength(1);
    expect(refused).toMatchObject({ code: 'CACHE_LOCKED' });
    expect((refused as Error).message).toContain(first.socketPath);
    expect((refused as Error).message).toContain(`pid ${holder.child.pid}`);
  });

  test('by a program that is not a daemon: connect starts one daemon, and fails at once with CACHE_LOCKED naming its pid', async () => {
    const { dir, socketPath, dataDir } = await autoStartPaths();
    const holder = await LevelCache.open(dataDir);
    onTestFinished(() => holder.close());
    const counting = await countingEntry(dir);
    const refused = await connect({ socketPath, dataDir, daemon: { entry: counting.entry } }).catch((e: unknown) => e);
    expect(await counting.spawns()).toHaveLength(1);
    expect(refused).toMatchObject({ code: 'CACHE_LOCKED' });
    expect((refused as Error).message).toContain(`Another program (pid ${process.pid})`);
  });

  test('by a program whose holder file could not be written: connect fails with CACHE_LOCKED naming its pid, without waiting out its start timeout', async () => {
    const { dir, socketPath, dataDir } = await autoStartPaths();
    // A directory where holder.json goes: the holder writes its file under another name, and the rename fails, as
    // on a full disk it could not be written at all.
    await mkdir(join(dataDir, 'instance-lock', 'holder.json', 'in-the-way'), { recursive: true, mode: 0o700 });
    const holder = await LevelCache.open(dataDir);
    onTestFinished(() => holder.close());
    // Nothing is left behind under the other name.
    expect(await readdir(join(dataDir, 'instance-lock'))).not.toContain(`holder.json.${process.pid}`);
    const counting = await countingEntry(dir);
    // 60 s: long enough that waiting it out would fail the test by its own timeout bound below.
    const started = Date.now();
    const refused = await connect({ socketPath, dataDir, daemon: { entry: counting.entry }, startTimeoutMs: 60_000 }).catch((e: unknown) => e);
    expect(await counting.spawns()).toHaveLength(1);
    expect(refused).toMatchObject({ code: 'CACHE_LOCKED' });
    expect((refused as Error).message).toContain(`pid ${process.pid}`);
    // A liveness bound: the daemon looks again for half a second, not for the client's whole start timeout.
    expect(Date.now() - started).toBeLessThan(30_000);
  });
});
