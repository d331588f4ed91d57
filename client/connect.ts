import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, readFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { type CodecName, codecNamed } from '../src/codecs.js';
import { CacheError } from '../src/errors.js';
import { codecAdapter } from '../src/codec-adapter.js';
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
}

/**
 * The daemon's entry script of the installed package: `daemon/main.js` beside this file's folder once built, or
 * the built one when running from the sources. Looked up only when a daemon is started, never at load.
 */
export function daemonEntry(): string {
  const candidates = [join(__dirname, '..', 'daemon', 'main.js'), join(__dirname, '..', 'dist', 'daemon', 'main.js')];
  const found = candidates.find((path) => existsSync(path));
  if (!found) throw new CacheError('CACHE_DAEMON_START_FAILED', `Cannot find the hoard daemon's entry script (looked for ${candidates.join(' and ')}).`);
  return found;
}

type StartOutcome = 'ready' | 'busy';

/** Starts a detached daemon and waits for its word on fd 3: ready, busy (another daemon won the race), or an error. */
async function startInBackground(socketPath: string, options: ConnectOptions, deadline: number): Promise<StartOutcome> {
  const logFile = defaultLogFile();
  await mkdir(dirname(logFile), { recursive: true, mode: 0o700 });
  const args = [...DAEMON_NODE_FLAGS, daemonEntry(), '--socket', socketPath, '--log-file', logFile, '--ready-fd', '3'];
  if (options.dataDir) args.push('--data-dir', options.dataDir);
  const child = spawn(process.execPath, args, { detached: true, stdio: ['ignore', 'ignore', 'ignore', 'pipe'] });
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
  if (line === 'ready') return 'ready';
  if (line.startsWith('busy')) return 'busy';
  if (line === 'timeout') {
    throw new CacheError('CACHE_DAEMON_START_FAILED', `The hoard daemon did not become ready in time; see its log: ${logFile}`);
  }
  const reason = line.startsWith('error ') ? line.slice(6) : `it exited without a word${await lastLogLine(logFile)}`;
  throw new CacheError('CACHE_DAEMON_START_FAILED', `The hoard daemon could not start: ${reason} (log: ${logFile})`);
}

async function lastLogLine(logFile: string): Promise<string> {
  const text = await readFile(logFile, 'utf8').catch(() => '');
  const last = text.trimEnd().split('\n').at(-1);
  return last ? `; its log ends with: ${last}` : '';
}

/** Opens a connection, starting a daemon when none answers and tolerating losing the race to start one. */
export async function openOrStart(socketPath: string, options: ConnectOptions): Promise<Channel> {
  const clientName = options.clientName ?? basename(process.argv[1] ?? 'node');
  const deadline = Date.now() + (options.startTimeoutMs ?? 10_000);
  let delayMs = 5;
  for (;;) {
    try {
      return await openSocketChannel(socketPath, {
        clientName,
        transport: options.transport,
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
    const outcome = await startInBackground(socketPath, options, deadline);
    if (outcome === 'busy') {
      // Another process's daemon holds the data directory and is about to listen: give it a moment.
      await new Promise((resolve) => setTimeout(resolve, delayMs));
      delayMs = Math.min(delayMs * 2, 100);
    }
  }
}

/**
 * Connects to the hoard daemon, starting one in the background if none runs, and resolves to a cache that
 * implements the whole `Cache` API. After the daemon goes away, pending calls reject with
 * `CACHE_CONNECTION_LOST` and the next call reconnects.
 * @throws CacheError `CACHE_DAEMON_START_FAILED`, `CACHE_PROTOCOL_MISMATCH`, `CACHE_SOCKET_PATH_TOO_LONG`.
 */
export async function connect<T = unknown>(options: ConnectOptions = {}): Promise<RemoteCache<T>> {
  const socketPath = options.socketPath ?? defaultSocketPath();
  checkSocketPathLength(socketPath);
  const adapter = codecAdapter(codecNamed<T>(options.codec ?? 'json'));
  const open = (): Promise<Channel> => openOrStart(socketPath, options);
  return new RemoteCache(new RemoteBackend(adapter, open, await open()));
}

