import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, readFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { type CodecName, codecNamed } from '../src/codecs.js';
import { CacheError } from '../src/errors.js';
import { codecAdapter } from '../src/codec-adapter.js';
import { isAlive } from '../src/private-files.js';
import { checkSocketPathLength, DAEMON_NODE_FLAGS, defaultLogFile, defaultSocketPath } from '../src/wire/paths.js';
import { type Channel, isNoDaemon } from './channel.js';
import { openSocketChannel, type TransportName } from './open-channel.js';
import { RemoteBackend, RemoteCache } from './remote-cache.js';

export interface ConnectOptions {
  /** The daemon's socket; default from `HOARD_SOCKET` or the XDG runtime directory. */
  socketPath?: string;
  /** How values become bytes, in this process; default `'json'`. */
  codec?: CodecName;
  /** Start a daemon in the background when none answers; default `true`. */
  autoStart?: boolean;
  /** Names this client in the daemon's log; default the script's name. */
  clientName?: string;
  /** The data directory a started daemon uses; default the daemon's own default. */
  dataDir?: string;
  /** How long to wait for a started daemon to be ready; default 10 s. */
  startTimeoutMs?: number;
  /** The wire format: `'binary'` (the default) or `'json'`, the JSON-RPC that any language can speak. */
  transport?: TransportName;
  /** How to start a daemon; default the installed package's entry script, run with this process's Node. */
  daemon?: DaemonLauncher;
  /**
   * Read values kept in files (32 KiB and more) from the daemon's files directly, when this process can open them (it
   * proves it in the handshake), instead of through the socket; default `true`. `false` always takes the bytes.
   */
  references?: boolean;
}

/**
 * How a client starts a daemon: `entry`, the daemon's entry script run with Node, or `command`, a program and its
 * arguments; not both. hoard appends the daemon's options (`--socket`, `--data-dir`, and `--log-file` and
 * `--ready-fd 3` in the background, or `--stdio`). Needed when the client is bundled, where it cannot find the
 * installed package.
 */
export interface DaemonLauncher {
  /** The daemon's entry script (`hoard-cache/daemon/main`, which is `dist/daemon/main.js` in the package), run with Node. */
  entry?: string;
  /**
   * The Node binary that runs `entry` (or the default entry); default this process's own, which under Electron runs
   * with `ELECTRON_RUN_AS_NODE=1`.
   */
  nodePath?: string;
  /** A program and its arguments that run the daemon in the foreground, such as `['hoard', 'daemon']`. */
  command?: readonly string[];
}

/** A daemon's process as it will be spawned: `env` holds the variables added to this process's environment. */
export interface DaemonSpawn {
  file: string;
  args: string[];
  env: Record<string, string>;
}

/** Refuses a `references` option that is not a boolean. */
export function checkReferencesOption(references: unknown): void {
  if (references !== undefined && typeof references !== 'boolean') throw new TypeError('The references option must be a boolean.');
}

/** Refuses a `daemon` option that is not one of the documented shapes, before anything is started. */
export function checkDaemonLauncher(launcher: unknown): void {
  if (launcher === undefined) return;
  if (typeof launcher !== 'object' || launcher === null) throw new TypeError('The daemon option must be an object.');
  const { entry, nodePath, command } = launcher as Record<string, unknown>;
  for (const [name, value] of [['entry', entry], ['nodePath', nodePath]] as const) {
    if (value !== undefined && (typeof value !== 'string' || value === '')) throw new TypeError(`daemon.${name} must be a non-empty string.`);
  }
  if (command === undefined) return;
  if (!Array.isArray(command) || command.length === 0 || command.some((word) => typeof word !== 'string') || command[0] === '') {
    throw new TypeError('daemon.command must be a non-empty array of strings: a program and its arguments.');
  }
  if (entry !== undefined || nodePath !== undefined) throw new TypeError('daemon.command runs a program of its own: give it without entry and nodePath.');
}

/**
 * How to spawn a daemon with `daemonArgs`. A Node launch (`entry`, or the installed entry by default) runs with
 * hoard's Node flags, through `nodePath` or else this process's own binary; when that binary is Electron's
 * (`versions.electron` is set), `ELECTRON_RUN_AS_NODE=1` makes it run the script as Node. A `command` runs as given.
 */
export function daemonSpawn(
  launcher: DaemonLauncher | undefined,
  daemonArgs: readonly string[],
  runtime: { execPath: string; versions: NodeJS.Dict<string> } = process,
): DaemonSpawn {
  if (launcher?.command) {
    const [file, ...args] = launcher.command;
    return { file: file!, args: [...args, ...daemonArgs], env: {} };
  }
  const args = [...DAEMON_NODE_FLAGS, launcher?.entry ?? daemonEntry(), ...daemonArgs];
  if (launcher?.nodePath) return { file: launcher.nodePath, args, env: {} };
  return { file: runtime.execPath, args, env: runtime.versions.electron ? { ELECTRON_RUN_AS_NODE: '1' } : {} };
}

/** The spawn as a shell command line, for messages. */
export function describeSpawn({ file, args, env }: DaemonSpawn): string {
  const quote = (word: string): string => (/^[\w@%+=:,./-]+$/.test(word) ? word : `'${word.replaceAll("'", "'\\''")}'`);
  return [...Object.entries(env).map(([name, value]) => `${name}=${quote(value)}`), ...[file, ...args].map(quote)].join(' ');
}

/**
 * The daemon's entry script of the installed package, `dist/daemon/main.js` (also when running from the sources).
 * Looked up only when a daemon is started, never at load: a bundle has no package to find.
 * @throws CacheError `CACHE_DAEMON_START_FAILED` when it is not there, as in a bundle; the message says to pass the
 * `daemon` option.
 */
export function daemonEntry(): string {
  // __dirname is this file's folder in the package: dist/client once built, client/ in the sources. An ES module
  // bundle has none, and a CommonJS bundle's is the bundle's own folder, which is no hoard package.
  const here = typeof __dirname === 'string' ? __dirname : undefined;
  const roots = here ? [join(here, '..', '..'), join(here, '..')] : [];
  const candidates = roots.filter(isHoardPackage).map((root) => join(root, 'dist', 'daemon', 'main.js'));
  const found = candidates.find((path) => existsSync(path));
  if (found) return found;
  const looked = !here
    ? 'this code has no __dirname, as in an ES module bundle'
    : candidates.length
      ? `looked for ${candidates.join(' and ')}`
      : `no hoard-cache package around ${here}, as in a bundle`;
  throw new CacheError(
    'CACHE_DAEMON_START_FAILED',
    `Cannot find the hoard daemon's entry script (${looked}). Say how to start the daemon with the daemon option: ` +
      "{ daemon: { entry: 'path/to/hoard-cache/dist/daemon/main.js' } } or { daemon: { command: ['hoard', 'daemon'] } }.",
  );
}

function isHoardPackage(root: string): boolean {
  try {
    return (JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { name?: unknown }).name === 'hoard-cache';
  } catch {
    return false;
  }
}

/** A started daemon's word: it is ready, or another daemon (`pid`, when known) serves the socket or is about to. */
type StartOutcome = { ready: true } | { ready: false; pid: number | undefined };

/**
 * Starts a detached daemon and waits for its word on fd 3: ready; busy (another daemon for this socket won the race);
 * held (a daemon on another socket, or another program, holds the data directory); or an error.
 * @throws CacheError `CACHE_LOCKED` with the daemon's word on who holds the data directory, `CACHE_DAEMON_START_FAILED`.
 */
async function startInBackground(socketPath: string, options: ConnectOptions, deadline: number): Promise<StartOutcome> {
  const logFile = defaultLogFile();
  await mkdir(dirname(logFile), { recursive: true, mode: 0o700 });
  const daemonArgs = ['--socket', socketPath, '--log-file', logFile, '--ready-fd', '3'];
  if (options.dataDir) daemonArgs.push('--data-dir', options.dataDir);
  const launch = daemonSpawn(options.daemon, daemonArgs);
  const ran = describeSpawn(launch);
  const child = spawn(launch.file, launch.args, {
    detached: true,
    env: { ...process.env, ...launch.env },
    stdio: ['ignore', 'ignore', 'ignore', 'pipe'],
  });
  const exited = new Promise<string>((resolve) => {
    child.once('exit', (code, signal) => resolve(signal ? `it was killed by ${signal}` : `it exited with status ${code}`));
    child.on('error', (error) => resolve(error.message));
  });
  const channel = child.stdio[3] as NodeJS.ReadableStream;
  let said = '';
  channel.on('data', (chunk: Buffer) => (said += chunk.toString()));
  const outcome = await new Promise<string>((resolve) => {
    const timer = setTimeout(() => resolve('timeout'), Math.max(0, deadline - Date.now()));
    channel.on('end', () => (clearTimeout(timer), resolve(said)));
    channel.on('error', () => (clearTimeout(timer), resolve(said)));
    child.on('error', (error) => (clearTimeout(timer), resolve(`error ${error.message}`)));
  });
  (channel as unknown as { destroy(): void }).destroy();
  child.unref();
  const line = outcome.trim();
  if (line === 'ready') return { ready: true };
  if (line.startsWith('busy')) {
    const pid = /^busy (\d+) /.exec(line)?.[1];
    return { ready: false, pid: pid === undefined ? undefined : Number(pid) };
  }
  if (line.startsWith('held ')) throw new CacheError('CACHE_LOCKED', line.slice('held '.length));
  if (line === 'timeout') {
    throw new CacheError('CACHE_DAEMON_START_FAILED', `The hoard daemon did not become ready in time (ran: ${ran}); see its log: ${logFile}`);
  }
  // Without a word, the daemon's fd 3 closed: it has exited, or is about to.
  const reason = line.startsWith('error ')
    ? line.slice(6)
    : `${await within(exited, deadline - Date.now(), 'it closed fd 3 without a word')}${await lastLogLine(logFile)}`;
  throw new CacheError('CACHE_DAEMON_START_FAILED', `The hoard daemon could not start: ${reason} (ran: ${ran}; log: ${logFile})`);
}

/** What `promise` resolves to, or `otherwise` once `ms` have passed. */
async function within<T>(promise: Promise<T>, ms: number, otherwise: T): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<T>((resolve) => (timer = setTimeout(() => resolve(otherwise), Math.max(0, ms))));
  try {
    return await Promise.race([promise, late]);
  } finally {
    clearTimeout(timer);
  }
}

async function lastLogLine(logFile: string): Promise<string> {
  const text = await readFile(logFile, 'utf8').catch(() => '');
  const last = text.trimEnd().split('\n').at(-1);
  return last ? `; its log ends with: ${last}` : '';
}

/**
 * Opens a connection, starting a daemon when none answers and tolerating losing the race to start one: while the
 * daemon that won it lives, it waits for that one to listen instead of starting another.
 * @throws CacheError `CACHE_LOCKED` at once when the data directory is held by a daemon on another socket (the
 * message names its socket and pid) or by another program; `CACHE_NO_DAEMON` with `autoStart: false`;
 * `CACHE_DAEMON_START_FAILED`; `CACHE_UNSAFE_DIRECTORY` for a socket that another user could have put there.
 */
export async function openOrStart(socketPath: string, options: ConnectOptions, wire: { chunks?: boolean } = {}): Promise<Channel> {
  const clientName = options.clientName ?? basename(process.argv[1] ?? 'node');
  const deadline = Date.now() + (options.startTimeoutMs ?? 10_000);
  let delayMs = 5;
  /** The daemon that won the race to start, which is about to listen: no other is started while it lives. */
  let winner: number | undefined;
  for (;;) {
    try {
      return await openSocketChannel(socketPath, {
        clientName,
        transport: options.transport,
        references: options.references !== false,
        chunks: wire.chunks === true,
        handshakeTimeoutMs: Math.max(1000, deadline - Date.now()),
      });
    } catch (error) {
      if (!isNoDaemon(error)) throw error;
      if (options.autoStart === false) {
        throw new CacheError('CACHE_NO_DAEMON', `No hoard daemon answers on ${socketPath}; start one with \`hoard daemon\`.`, {
          cause: error,
        });
      }
    }
    if (Date.now() > deadline) {
      throw new CacheError('CACHE_DAEMON_START_FAILED', `No hoard daemon answered on ${socketPath} in time; see ${defaultLogFile()}`);
    }
    if (winner === undefined || !isAlive(winner)) {
      const outcome = await startInBackground(socketPath, options, deadline);
      if (outcome.ready) continue;
      winner = outcome.pid;
    }
    // Another daemon for this socket holds the data directory and is about to listen: give it a moment.
    await new Promise((resolve) => setTimeout(resolve, delayMs));
    delayMs = Math.min(delayMs * 2, 100);
  }
}

/**
 * Connects to the hoard daemon, starting one in the background if none runs, and resolves to a cache that
 * implements the whole `Cache` API. After the daemon goes away, pending calls reject with
 * `CACHE_CONNECTION_LOST` and the next call reconnects.
 * @throws CacheError `CACHE_DAEMON_START_FAILED`, `CACHE_PROTOCOL_MISMATCH`, `CACHE_SOCKET_PATH_TOO_LONG`,
 * `CACHE_LOCKED` (the data directory is held by a daemon on another socket: the message names it),
 * `CACHE_UNSAFE_DIRECTORY` (another user could have put or replaced the socket).
 */
export async function connect<T = unknown>(options: ConnectOptions = {}): Promise<RemoteCache<T>> {
  checkDaemonLauncher(options.daemon);
  checkReferencesOption(options.references);
  const socketPath = options.socketPath ?? defaultSocketPath();
  checkSocketPathLength(socketPath);
  const adapter = codecAdapter(codecNamed<T>(options.codec ?? 'json'));
  const open = (): Promise<Channel> => openOrStart(socketPath, options, { chunks: true });
  return new RemoteCache(new RemoteBackend(adapter, open, await open()));
}

