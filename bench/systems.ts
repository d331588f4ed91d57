/**
 * The systems the benchmark compares, each as a server side (started once per measurement, in its own process
 * where there is one) and a client side (opened in every worker process).
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdir } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import cacache from 'cacache';
import { Redis } from 'ioredis';
import { Level } from 'level';
import { connect } from '../client/index.js';
import { DAEMON_NODE_FLAGS } from '../src/wire/paths.js';
import { type Cache, LevelCache } from '../src/index.js';

export interface Client {
  get(key: string): Promise<unknown>;
  set(key: string, value: Uint8Array): Promise<void>;
  close(): Promise<void>;
}

export interface Server {
  /** What a worker needs to reach it. */
  endpoint: string;
  /** The server's own process, when it has one, for its memory figures. */
  pid?: number;
  stop(): Promise<void>;
}

export interface System {
  name: string;
  /** Whether several processes can use one instance (the 4x8 mode). */
  shared: boolean;
  start(dir: string): Promise<Server>;
  open(endpoint: string): Promise<Client>;
}

const HOARD_BIN = join(__dirname, '..', 'client', 'bin.js');

/** Starts a child process and resolves once a line of its stderr or stdout contains `ready`. */
async function startProcess(command: string, args: string[], ready: string): Promise<ChildProcess> {
  const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let seen = '';
  await new Promise<void>((resolve, reject) => {
    const look = (chunk: Buffer): void => {
      seen += chunk.toString();
      if (seen.includes(ready)) resolve();
    };
    child.stdout!.on('data', look);
    child.stderr!.on('data', look);
    child.once('exit', (code) => reject(new Error(`${command} exited with ${code}: ${seen}`)));
  });
  return child;
}

async function stopProcess(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  child.kill('SIGTERM');
  await once(child, 'exit');
}

/** The "server" of a system that lives in the worker's own process: just its directory. */
async function inProcess(dir: string): Promise<Server> {
  return { endpoint: join(dir, 'data'), stop: async () => {} };
}

/** A benchmark client over any hoard cache: a get reads the value and releases its lock. */
function cacheClient(cache: Cache<Uint8Array> & { close(): Promise<void> }): Client {
  return {
    async get(key) {
      const got = await cache.get(key);
      const value = await got.item?.value();
      await got.release();
      return value;
    },
    set: (key, value) => cache.set(key, value),
    close: () => cache.close(),
  };
}

/** Node flags added to every daemon the benchmark starts, from `HOARD_BENCH_DAEMON_FLAGS` (space-separated): for profiles. */
const EXTRA_DAEMON_FLAGS = (process.env['HOARD_BENCH_DAEMON_FLAGS'] ?? '').split(' ').filter(Boolean);

/**
 * Node flags for the daemon of one `--build`, from `HOARD_BENCH_BUILD_DAEMON_FLAGS`, a JSON object of space-separated
 * flags by build name (`{"semi16":"--max-semi-space-size=16"}`): after the others, so they win.
 */
const BUILD_DAEMON_FLAGS = JSON.parse(process.env['HOARD_BENCH_BUILD_DAEMON_FLAGS'] ?? '{}') as Record<string, string>;

/** Starts a hoard daemon on `dir`'s socket and data directory, with more `hoard daemon` flags and Node flags if given. */
export async function startHoard(dir: string, flags: string[] = [], bin = HOARD_BIN, nodeFlags: string[] = []): Promise<Server> {
  const socketPath = join(dir, 's.sock');
  const args = [...DAEMON_NODE_FLAGS, ...EXTRA_DAEMON_FLAGS, ...nodeFlags, bin, 'daemon', '--socket', socketPath, '--data-dir', join(dir, 'data'), ...flags];
  const child = await startProcess(process.execPath, args, 'listening on');
  return { endpoint: socketPath, pid: child.pid, stop: () => stopProcess(child) };
}

export const hoard: System = {
  name: 'hoard',
  shared: true,
  start: (dir) => startHoard(dir, ['--max-size', 'unlimited']),
  async open(endpoint) {
    return cacheClient(await connect<Uint8Array>({ socketPath: endpoint, codec: 'binary', autoStart: false, clientName: 'bench' }));
  },
};

/** The other builds named with `--build`, as `name=distDir` pairs: passed on to the workers through the environment. */
const BUILDS_VARIABLE = 'HOARD_BENCH_BUILDS';

/**
 * hoard as another build has it (its `dist/`: daemon and client both, with a package.json beside `dist/`), under
 * `name`: for before/after figures in one run. A worker finds it by name through `HOARD_BENCH_BUILDS`.
 */
export function hoardBuild(name: string, distDir: string): System {
  const builds = JSON.parse(process.env[BUILDS_VARIABLE] ?? '{}') as Record<string, string>;
  process.env[BUILDS_VARIABLE] = JSON.stringify({ ...builds, [name]: resolve(distDir) });
  return {
    name,
    shared: true,
    start: (dir) =>
      startHoard(dir, ['--max-size', 'unlimited'], join(resolve(distDir), 'client', 'bin.js'), (BUILD_DAEMON_FLAGS[name] ?? '').split(' ').filter(Boolean)),
    async open(endpoint) {
      const client = require(join(resolve(distDir), 'client', 'index.js')) as typeof import('../client/index.js');
      return cacheClient(await client.connect<Uint8Array>({ socketPath: endpoint, codec: 'binary', autoStart: false, clientName: 'bench' }));
    },
  };
}

export const levelCache: System = {
  name: 'LevelCache',
  shared: false,
  start: inProcess,
  async open(endpoint) {
    return cacheClient(await LevelCache.open<Uint8Array>(endpoint, { codec: 'binary' }));
  },
};

export const classicLevel: System = {
  name: 'classic-level',
  shared: false,
  start: inProcess,
  async open(endpoint) {
    const db = new Level<string, Uint8Array>(endpoint, { valueEncoding: 'view' });
    await db.open();
    return { get: (key) => db.get(key), set: (key, value) => db.put(key, value), close: () => db.close() };
  },
};

/**
 * Starts a redis-server of its own on a Unix socket in `dir`, with no TCP port and more configuration if given
 * (`--name value` pairs); by default with no persistence.
 */
export async function startRedis(dir: string, config: string[] = ['--save', '', '--appendonly', 'no']): Promise<Server> {
  const socketPath = join(dir, 'redis.sock');
  await mkdir(join(dir, 'redis'), { recursive: true });
  const args = ['--port', '0', '--unixsocket', socketPath, '--unixsocketperm', '700', '--dir', join(dir, 'redis'), ...config];
  const child = await startProcess('redis-server', args, 'ready to accept connections');
  return { endpoint: socketPath, pid: child.pid, stop: () => stopProcess(child) };
}

export const redis: System = {
  name: 'redis',
  shared: true,
  start: (dir) => startRedis(dir),
  async open(endpoint) {
    const client = new Redis({ path: endpoint });
    return {
      get: (key) => client.getBuffer(key),
      set: async (key, value) => void (await client.set(key, Buffer.from(value.buffer, value.byteOffset, value.byteLength))),
      close: async () => void (await client.quit()),
    };
  },
};

export const cacacheSystem: System = {
  name: 'cacache',
  shared: true,
  async start(dir) {
    return { endpoint: join(dir, 'cacache'), stop: async () => {} };
  },
  async open(endpoint) {
    return {
      get: async (key) => (await cacache.get(endpoint, key).catch(() => undefined))?.data,
      set: async (key, value) => void (await cacache.put(endpoint, key, Buffer.from(value.buffer, value.byteOffset, value.byteLength))),
      close: async () => {},
    };
  },
};

export const SYSTEMS: readonly System[] = [
  hoard,
  levelCache,
  classicLevel,
  redis,
  cacacheSystem,
  ...Object.entries(JSON.parse(process.env[BUILDS_VARIABLE] ?? '{}') as Record<string, string>).map(([name, dir]) => hoardBuild(name, dir)),
];
