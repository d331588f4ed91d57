import { spawn, type ChildProcess } from 'node:child_process';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { onTestFinished } from 'vitest';
import { PROJECT_ROOT } from './child.js';
import { tempDir } from './temp-dir.js';

/** The built `hoard` command. */
export const BIN = join(PROJECT_ROOT, 'dist/client/bin.js');

/** The built client, which child processes import (npm test builds first). */
export const CLIENT_MODULE = JSON.stringify(join(PROJECT_ROOT, 'dist/client/index.js'));

export interface LineChild {
  child: ChildProcess;
  lines: string[];
  /** Resolves with the first line that satisfies `match`, among those already seen or to come. */
  line(match: (line: string) => boolean): Promise<string>;
  exited: Promise<number | null>;
}

/** Starts an ES module as a child process and follows its stdout line by line; it is killed when the test ends. */
export function startModule(source: string, args: string[] = []): LineChild {
  const child = spawn(process.execPath, ['--input-type=module', '-e', source, '--', ...args], {
    cwd: PROJECT_ROOT,
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  onTestFinished(() => void child.kill('SIGKILL'));
  const lines: string[] = [];
  const watchers: { match: (line: string) => boolean; resolve: (line: string) => void }[] = [];
  createInterface({ input: child.stdout! }).on('line', (line) => {
    lines.push(line);
    for (const watcher of [...watchers]) {
      if (watcher.match(line)) {
        watchers.splice(watchers.indexOf(watcher), 1);
        watcher.resolve(line);
      }
    }
  });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  return {
    child,
    lines,
    exited,
    line: (match) =>
      new Promise((resolve, reject) => {
        const seen = lines.find(match);
        if (seen !== undefined) return resolve(seen);
        watchers.push({ match, resolve });
        void exited.then(() => reject(new Error(`the child exited without printing the line; it printed: ${lines.join(' | ')}`)));
      }),
  };
}

/** The pids of running `hoard daemon` processes serving `socketPath`. */
export async function daemonPids(socketPath: string): Promise<number[]> {
  const pids: number[] = [];
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const cmdline = await readFile(`/proc/${entry}/cmdline`, 'utf8').catch(() => '');
    const args = cmdline.split('\0');
    const isDaemon = args.includes('daemon') || args.some((arg) => arg.endsWith('daemon/main.js'));
    if (isDaemon && args.includes(socketPath)) {
      const state = await readFile(`/proc/${entry}/stat`, 'utf8').catch(() => '');
      if (!/\) Z /.test(state)) pids.push(Number(entry));
    }
  }
  return pids;
}

/** A fresh socket path and data directory for daemons that `connect()` starts, stopped when the test ends. */
export async function autoStartPaths(): Promise<{ dir: string; socketPath: string; dataDir: string }> {
  const dir = await tempDir('hd-');
  const socketPath = join(dir, 's.sock');
  stopDaemonsAfterTest(socketPath);
  return { dir, socketPath, dataDir: join(dir, 'data') };
}

/** Stops every daemon on `socketPath` when the test ends. */
export function stopDaemonsAfterTest(socketPath: string): void {
  onTestFinished(async () => {
    for (const pid of await daemonPids(socketPath)) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // Already gone.
      }
    }
  });
}

/** Whether the process still runs (a zombie, dead but not yet reaped, does not). */
export async function isRunning(pid: number): Promise<boolean> {
  const state = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '');
  return state !== '' && !/\) Z /.test(state);
}

/** Resolves once the process is gone. */
export async function waitForExit(pid: number): Promise<void> {
  for (;;) {
    try {
      process.kill(pid, 0);
      const state = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '');
      if (/\) Z /.test(state) || state === '') return;
    } catch {
      return;
    }
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

export interface DaemonProcess {
  child: ChildProcess;
  socketPath: string;
  dataDir: string;
  /** Its stderr lines so far. */
  log: string[];
  exited: Promise<number | null>;
  stdout(): string;
}

/**
 * Starts `hoard daemon` in the foreground as a child process and resolves once it listens; killed when the test ends.
 * `nodeFlags` go to Node (clients start the daemon with `DAEMON_NODE_FLAGS`).
 */
export async function startDaemonProcess(options: {
  socketPath: string;
  dataDir: string;
  extra?: string[];
  nodeFlags?: readonly string[];
  /** Added to the test's environment. */
  env?: NodeJS.ProcessEnv;
}): Promise<DaemonProcess> {
  const args = [...(options.nodeFlags ?? []), BIN, 'daemon', '--socket', options.socketPath, '--data-dir', options.dataDir, ...(options.extra ?? [])];
  const child = spawn(process.execPath, args, {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: options.env === undefined ? undefined : { ...process.env, ...options.env },
  });
  onTestFinished(() => void child.kill('SIGKILL'));
  let stdout = '';
  child.stdout!.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
  const log: string[] = [];
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  await new Promise<void>((resolve, reject) => {
    createInterface({ input: child.stderr! }).on('line', (line) => {
      log.push(line);
      if (line.includes('listening on')) resolve();
    });
    void exited.then(() => reject(new Error(`the daemon exited: ${log.join('\n')}`)));
  });
  return { child, socketPath: options.socketPath, dataDir: options.dataDir, log, exited, stdout: () => stdout };
}

export interface HoardRun {
  code: number | null;
  stdout: Buffer;
  stderr: string;
}

/** Runs the built `hoard` command with `args`, feeding it `input` on stdin; `env` replaces the environment. */
export function runHoard(args: string[], input?: string | Buffer, env?: NodeJS.ProcessEnv): Promise<HoardRun> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, ...args], { stdio: ['pipe', 'pipe', 'pipe'], env });
    const stdout: Buffer[] = [];
    let stderr = '';
    child.stdout!.on('data', (chunk: Buffer) => stdout.push(chunk));
    child.stderr!.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout: Buffer.concat(stdout), stderr }));
    child.stdin!.end(input);
  });
}
