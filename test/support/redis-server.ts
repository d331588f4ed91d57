import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer, type Server, type Socket, connect as netConnect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { afterAll, beforeAll, onTestFinished } from 'vitest';
import { runProcess } from './child.js';

/**
 * Real `redis-server` processes for the shared tier's tests (Debian's 7.0 package, installed by `.ci/run`): one server
 * on a loopback port or a Unix socket, a three-master Redis Cluster on loopback ports, and a TCP proxy that can cut
 * the network between a daemon and a server. Every server runs without persistence (`save ""`, `appendonly no`) in a
 * private temp directory, and is killed when the test (or, with `until: 'manual'`, the worker) ends.
 */

/** An ACL user to create: `rules` are `ACL SETUSER` rules (`~pattern`, `&channel`, `+@read`, ...), without `on` or the password. */
export interface RedisUser {
  name: string;
  password: string;
  rules: readonly string[];
}

/**
 * Rules for a user that may read the tier under `prefix` and follow its changes, but write nothing: what README
 * advises for `shared-read` runners. Lua scripts (`@scripting`) are writes here, so they are refused too.
 */
export function readOnlyRules(prefix = 'hoard'): string[] {
  return [`~{${prefix}:*`, `~${prefix}:*`, `&${prefix}:*`, '+@read', '+@connection', '+subscribe', '+ping'];
}

export interface RedisServer {
  /** `redis://127.0.0.1:<port>` or `unix://<path>`: what `--tier` takes. */
  readonly url: string;
  readonly port: number | undefined;
  readonly socketPath: string | undefined;
  readonly pid: number;
  /** Runs `redis-cli` against the server as its default user (who may do anything) and resolves to its output, trimmed. */
  cli(...args: string[]): Promise<string>;
  /** Runs many one-line-reply commands through one `redis-cli`: see {@link cliPipeline}. */
  pipeline(commands: readonly (readonly string[])[]): Promise<string[]>;
  /** Stops the server (SIGTERM, no save) and resolves once it exited. */
  stop(): Promise<void>;
  /**
   * Kills the server (SIGKILL, also when stopped by SIGSTOP) and starts it again on the same port, directory and
   * configuration, with no data (no RDB, no AOF): a machine that restarted empty. A Cluster node keeps its node id and
   * slots (its `nodes.conf`). Resolves once it accepts connections.
   */
  restartEmpty(): Promise<void>;
  /**
   * Kills the server (SIGKILL) and starts it again from the snapshot its last `SAVE` wrote: a restart that lost the
   * writes made since (as with `appendfsync everysec`). Resolves once it accepts connections.
   */
  restartFromSnapshot(): Promise<void>;
  /** Resolves with the first line of the server's log that matches `pattern`, among those logged already or to come. */
  logged(pattern: RegExp): Promise<string>;
}

export interface RedisServerOptions {
  /** Listen on a Unix socket in the server's private directory instead of a loopback port. */
  unixSocket?: boolean;
  users?: readonly RedisUser[];
  /** More `redis.conf` lines. */
  config?: readonly string[];
  /** `'test'` (the default): killed when the current test finishes; `'manual'`: the caller stops it (afterAll), or the worker's exit kills it. */
  until?: 'test' | 'manual';
  /** Listen with TLS only, on a loopback port (`rediss://`), with this certificate: see {@link makeTlsFiles}. */
  tls?: TlsFiles;
}

/** A throwaway CA and a server certificate it signed (for 127.0.0.1 and localhost), as PEM files. */
export interface TlsFiles {
  readonly caFile: string;
  readonly certFile: string;
  readonly keyFile: string;
  /** The CA certificate's PEM text. */
  readonly ca: string;
}

/** Makes a CA and a server certificate with `openssl` in a private temp directory, removed when the test ends. */
export async function makeTlsFiles(): Promise<TlsFiles> {
  const dir = await mkdtemp(join(tmpdir(), 'htls-'));
  onTestFinished(() => rm(dir, { recursive: true, force: true }));
  const at = (name: string): string => join(dir, name);
  const openssl = async (...args: string[]): Promise<void> => {
    const result = await runProcess('openssl', args, { cwd: dir });
    if (result.code !== 0) throw new Error(`openssl ${args[0]} exited with ${result.code}: ${result.stderr}`);
  };
  const key = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  await openssl('req', '-x509', ...key, '-keyout', at('ca.key'), '-out', at('ca.pem'), '-days', '2', '-subj', '/CN=hoard test CA');
  await openssl('req', ...key, '-keyout', at('server.key'), '-out', at('server.csr'), '-subj', '/CN=localhost');
  await writeFile(at('server.ext'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\n', { mode: 0o600 });
  await openssl('x509', '-req', '-in', at('server.csr'), '-CA', at('ca.pem'), '-CAkey', at('ca.key'), '-CAcreateserial', '-out', at('server.pem'), '-days', '2', '-extfile', at('server.ext'));
  return { caFile: at('ca.pem'), certFile: at('server.pem'), keyFile: at('server.key'), ca: await readFile(at('ca.pem'), 'utf8') };
}

/** Every server still running, killed if the worker exits without stopping them. */
const running = new Set<ChildProcess>();
process.once('exit', () => {
  for (const child of running) child.kill('SIGKILL');
});

/** A loopback port that was free a moment ago. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
}

function cleanUpWhen(until: 'test' | 'manual', stop: () => Promise<void>): void {
  if (until === 'test') onTestFinished(stop);
}

interface Launched {
  child: ChildProcess;
  exited: Promise<void>;
  logged(pattern: RegExp): Promise<string>;
}

/** Starts `redis-server <config file>` and resolves once it accepts connections; rejects with its log if it exits first. */
async function launch(dir: string, lines: readonly string[]): Promise<Launched> {
  const configPath = join(dir, 'redis.conf');
  await writeFile(configPath, `${lines.join('\n')}\n`, { mode: 0o600 });
  // setpriv --pdeathsig: the server is killed with the test worker, however that ends (a worker killed on a timeout
  // runs no exit handler).
  const child = spawn('setpriv', ['--pdeathsig', 'KILL', '--', 'redis-server', configPath], { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
  running.add(child);
  // A server that never says it is ready is killed, rather than left behind by a test that gave up on it.
  const readyTimer = setTimeout(() => child.kill('SIGKILL'), 30_000);
  const exited = new Promise<void>((resolve) =>
    child.once('exit', () => {
      running.delete(child);
      resolve();
    }),
  );
  const log: string[] = [];
  const watchers = new Set<{ pattern: RegExp; resolve: (line: string) => void }>();
  const logLine = (line: string): void => {
    log.push(line);
    for (const watcher of watchers) {
      if (watcher.pattern.test(line)) {
        watchers.delete(watcher);
        watcher.resolve(line);
      }
    }
  };
  const logged = (pattern: RegExp): Promise<string> =>
    new Promise((resolve, reject) => {
      const seen = log.find((line) => pattern.test(line));
      if (seen !== undefined) return resolve(seen);
      watchers.add({ pattern, resolve });
      void exited.then(() => reject(new Error(`redis-server exited without logging ${pattern}:\n${log.join('\n')}`)));
    });
  createInterface({ input: child.stderr! }).on('line', logLine);
  createInterface({ input: child.stdout! }).on('line', logLine);
  await new Promise<void>((resolve, reject) => {
    child.once('error', reject);
    void logged(/ready to accept connections/i).then(() => resolve(), reject);
  }).finally(() => clearTimeout(readyTimer));
  return { child, exited, logged };
}

function commonConfig(dir: string): string[] {
  return [
    'daemonize no',
    'logfile ""',
    'loglevel notice',
    `dir ${dir}`,
    'save ""',
    'appendonly no',
    'protected-mode no',
    'databases 1',
  ];
}

function userLines(users: readonly RedisUser[]): string[] {
  // Each word quoted, as redis.conf splits a line (a JSON string's escapes for these ASCII words are its own).
  return users.map((user) => ['user', user.name, 'on', `>${user.password}`, ...user.rules].map((word) => JSON.stringify(word)).join(' '));
}

/** Stops the server (SIGTERM, then SIGKILL after 5 s) and removes its directory; the same promise every call. */
function stopper(current: () => Launched, dir: string): () => Promise<void> {
  let stopping: Promise<void> | undefined;
  return () =>
    (stopping ??= (async () => {
      const launched = current();
      launched.child.kill('SIGTERM');
      const killTimer = setTimeout(() => launched.child.kill('SIGKILL'), 5000);
      await launched.exited;
      clearTimeout(killTimer);
      await rm(dir, { recursive: true, force: true });
    })());
}

function cliRunner(connection: string[]): (...args: string[]) => Promise<string> {
  return async (...args) => {
    const result = await runProcess('redis-cli', [...connection, ...args], { cwd: tmpdir() });
    if (result.code !== 0) throw new Error(`redis-cli ${args.join(' ')} exited with ${result.code}: ${result.stderr}${result.stdout}`);
    return result.stdout.trim();
  };
}

/**
 * Runs many commands through one `redis-cli` (read from its standard input) and resolves to each reply as `--no-raw`
 * prints it, one line each: for commands whose reply is one string, number or nil (`(nil)`).
 */
function cliPipeline(connection: string[]): (commands: readonly (readonly string[])[]) => Promise<string[]> {
  return (commands) =>
    new Promise((resolve, reject) => {
      const child = spawn('redis-cli', [...connection, '--no-raw'], { cwd: tmpdir(), stdio: ['pipe', 'pipe', 'pipe'] });
      let stdout = '';
      let stderr = '';
      child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
      child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
      child.on('error', reject);
      child.on('close', (code) => {
        // With -c, a redirection is announced on stdout too.
        const lines = stdout.split('\n').filter((line) => line !== '' && !line.startsWith('-> Redirected'));
        if (code !== 0 || lines.length !== commands.length) reject(new Error(`redis-cli exited with ${code}, ${lines.length} replies to ${commands.length} commands: ${stderr}${stdout}`));
        else resolve(lines);
      });
      // Each argument quoted, as redis-cli splits a line (a JSON string's escapes for these ASCII arguments are its own).
      child.stdin.end(commands.map((args) => args.map((arg) => JSON.stringify(arg)).join(' ')).join('\n') + '\n');
    });
}

/** Starts one `redis-server`. */
export async function startRedisServer(options: RedisServerOptions = {}): Promise<RedisServer> {
  const dir = await mkdtemp(join(tmpdir(), 'hredis-'));
  const users = userLines(options.users ?? []);
  for (let attempt = 1; ; attempt++) {
    const port = options.unixSocket ? 0 : await freePort();
    const socketPath = options.unixSocket ? join(dir, 'redis.sock') : undefined;
    const tls = options.tls;
    const listen =
      socketPath !== undefined
        ? ['port 0', `unixsocket ${socketPath}`, 'unixsocketperm 700']
        : tls !== undefined
          ? ['port 0', `tls-port ${port}`, 'bind 127.0.0.1', `tls-cert-file ${tls.certFile}`, `tls-key-file ${tls.keyFile}`, `tls-ca-cert-file ${tls.caFile}`, 'tls-auth-clients no']
          : [`port ${port}`, 'bind 127.0.0.1'];
    let launched: Launched;
    const lines = [...commonConfig(dir), ...listen, ...users, ...(options.config ?? [])];
    try {
      launched = await launch(dir, lines);
    } catch (error) {
      // Another process took the port between freePort() and the server's bind: try another.
      if (attempt < 5 && socketPath === undefined && String(error).includes('Address already in use')) continue;
      await rm(dir, { recursive: true, force: true });
      throw error;
    }
    const stop = stopper(() => launched, dir);
    cleanUpWhen(options.until ?? 'test', stop);
    const cliConnection = socketPath === undefined ? ['-h', '127.0.0.1', '-p', String(port), ...tlsCliFlags(tls)] : ['-s', socketPath];
    return {
      url: socketPath === undefined ? `${tls === undefined ? 'redis' : 'rediss'}://127.0.0.1:${port}` : `unix://${socketPath}`,
      port: socketPath === undefined ? port : undefined,
      socketPath,
      get pid() {
        return launched.child.pid!;
      },
      cli: cliRunner(cliConnection),
      pipeline: cliPipeline(cliConnection),
      stop,
      async restartEmpty() {
        launched.child.kill('SIGKILL');
        await launched.exited;
        await rm(join(dir, 'dump.rdb'), { force: true });
        launched = await launch(dir, lines);
      },
      async restartFromSnapshot() {
        launched.child.kill('SIGKILL');
        await launched.exited;
        launched = await launch(dir, lines);
      },
      logged: (pattern) => launched.logged(pattern),
    };
  }
}

/** `redis-cli`'s flags for a TLS server. */
function tlsCliFlags(tls: TlsFiles | undefined): string[] {
  return tls === undefined ? [] : ['--tls', '--cacert', tls.caFile];
}

/**
 * One `redis-server` for the whole test file: started in `beforeAll`, stopped in `afterAll`. The returned server
 * stands for it (its fields read the running one), so tests give each run a key prefix of their own, not a server.
 */
export function redisServerForFile(options: Omit<RedisServerOptions, 'until'> = {}): RedisServer {
  let started: RedisServer | undefined;
  beforeAll(async () => {
    started = await startRedisServer({ ...options, until: 'manual' });
  });
  afterAll(async () => {
    await started?.stop();
  });
  const running = (): RedisServer => {
    if (started === undefined) throw new Error('the file\'s redis-server is used outside its tests (before beforeAll)');
    return started;
  };
  return {
    get url() {
      return running().url;
    },
    get port() {
      return running().port;
    },
    get socketPath() {
      return running().socketPath;
    },
    get pid() {
      return running().pid;
    },
    cli: (...args) => running().cli(...args),
    pipeline: (commands) => running().pipeline(commands),
    stop: () => running().stop(),
    restartEmpty: () => running().restartEmpty(),
    restartFromSnapshot: () => running().restartFromSnapshot(),
    logged: (pattern) => running().logged(pattern),
  };
}

export interface RedisCluster {
  /** The masters, each `redis://127.0.0.1:<port>`: the seeds for `--tier` with `--tier-cluster`. */
  readonly urls: readonly string[];
  readonly nodes: readonly RedisServer[];
  /** Runs `redis-cli -c` (following redirections) against the first master. */
  cli(...args: string[]): Promise<string>;
  pipeline(commands: readonly (readonly string[])[]): Promise<string[]>;
  stop(): Promise<void>;
}

const SLOTS = 16384;

/**
 * Starts a Redis Cluster of `masters` masters (no replicas) on loopback ports, forms it (slots split evenly,
 * CLUSTER MEET) and resolves once every node reports `cluster_state:ok`.
 */
export async function startRedisCluster(
  options: { masters?: number; users?: readonly RedisUser[]; until?: 'test' | 'manual'; tls?: TlsFiles } = {},
): Promise<RedisCluster> {
  const count = options.masters ?? 3;
  const nodes: { server: RedisServer; busPort: number }[] = [];
  const stopAll = async (): Promise<void> => {
    await Promise.all(nodes.map((node) => node.server.stop()));
  };
  cleanUpWhen(options.until ?? 'test', stopAll);
  try {
    for (let n = 0; n < count; n++) {
      // The bus port is given explicitly (`cluster-port`), so that it is a free one too, not the port + 10000.
      const busPort = await freePort();
      const server = await startRedisServer({
        users: options.users,
        until: 'manual',
        // With TLS, the cluster bus is TLS too, and CLUSTER SLOTS names the nodes' TLS ports.
        ...(options.tls !== undefined && { tls: options.tls }),
        config: [
          'cluster-enabled yes',
          'cluster-config-file nodes.conf',
          `cluster-port ${busPort}`,
          'cluster-announce-ip 127.0.0.1',
          'cluster-node-timeout 5000',
          ...(options.tls === undefined ? [] : ['tls-cluster yes', 'tls-replication yes']),
        ],
      });
      nodes.push({ server, busPort });
    }
    await Promise.all(
      nodes.map(({ server }, n) => {
        const first = Math.floor((SLOTS * n) / count);
        const last = Math.floor((SLOTS * (n + 1)) / count) - 1;
        return server.pipeline([
          ['CLUSTER', 'ADDSLOTSRANGE', String(first), String(last)],
          ['CLUSTER', 'SET-CONFIG-EPOCH', String(n + 1)],
        ]);
      }),
    );
    await nodes[0]!.server.pipeline(nodes.slice(1).map(({ server, busPort }) => ['CLUSTER', 'MEET', '127.0.0.1', String(server.port), String(busPort)]));
    // A node logs the change of its state to ok once it sees every slot served, by masters it can reach: then it knows
    // every master, as each serves slots of its own.
    let formTimer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<never>((_, reject) => {
      formTimer = setTimeout(() => reject(new Error('the cluster did not form within 30 s')), 30_000);
    });
    try {
      await Promise.race([Promise.all(nodes.map(({ server }) => server.logged(/Cluster state changed: ok/))), timedOut]);
    } finally {
      clearTimeout(formTimer);
    }
    for (const info of await Promise.all(nodes.map(({ server }) => server.cli('CLUSTER', 'INFO')))) {
      if (!info.includes('cluster_state:ok') || !info.includes(`cluster_known_nodes:${count}`)) throw new Error(`the cluster formed wrongly: ${info}`);
    }
  } catch (error) {
    await stopAll();
    throw error;
  }
  const first = nodes[0]!.server;
  return {
    urls: nodes.map((node) => node.server.url),
    nodes: nodes.map((node) => node.server),
    cli: cliRunner(['-c', '-h', '127.0.0.1', '-p', String(first.port), ...tlsCliFlags(options.tls)]),
    pipeline: cliPipeline(['-c', '-h', '127.0.0.1', '-p', String(first.port), ...tlsCliFlags(options.tls)]),
    stop: stopAll,
  };
}

/** How a {@link TcpProxy} cuts the network: `blackhole` keeps every socket open and forwards nothing (a silent partition); `reset` destroys them with RST and refuses new ones. */
export type CutMode = 'blackhole' | 'reset';

export interface TcpProxy {
  /** `redis://127.0.0.1:<port>`: the proxy's address, for `--tier`. */
  readonly url: string;
  readonly port: number;
  /** Connections open now (client side). */
  readonly connections: number;
  /** How many connections it has accepted in all. */
  readonly accepted: number;
  readonly isCut: boolean;
  cut(mode?: CutMode): void;
  /** Forwards again: blackholed sockets resume where they stopped (nothing was lost), new connections go through. */
  restore(): void;
  close(): Promise<void>;
}

interface Pair {
  client: Socket;
  upstream: Socket | undefined;
}

/**
 * A TCP proxy on a loopback port in front of `target` (a server's port or Unix socket), which the test can cut and
 * restore. Closed when the test finishes (or by the caller, with `until: 'manual'`).
 */
export async function startTcpProxy(target: { port?: number; socketPath?: string }, options: { until?: 'test' | 'manual' } = {}): Promise<TcpProxy> {
  const pairs = new Set<Pair>();
  let cutMode: CutMode | undefined;
  let accepted = 0;

  const connectUpstream = (pair: Pair): void => {
    const upstream = target.socketPath !== undefined ? netConnect(target.socketPath) : netConnect(target.port!, '127.0.0.1');
    pair.upstream = upstream;
    upstream.setNoDelay(true);
    upstream.on('data', (chunk) => pair.client.write(chunk));
    upstream.on('error', () => pair.client.destroy());
    upstream.on('close', () => pair.client.destroy());
    pair.client.on('data', (chunk) => upstream.write(chunk));
    pair.client.resume();
  };

  const server: Server = createServer({ pauseOnConnect: true }, (client) => {
    accepted++;
    if (cutMode === 'reset') {
      client.resetAndDestroy();
      return;
    }
    const pair: Pair = { client, upstream: undefined };
    pairs.add(pair);
    client.setNoDelay(true);
    client.on('error', () => pair.upstream?.destroy());
    client.on('close', () => {
      pairs.delete(pair);
      pair.upstream?.destroy();
    });
    // During a blackhole, a new connection is accepted (its SYN answered, as a half-broken network may) but goes nowhere until restored.
    if (cutMode === undefined) connectUpstream(pair);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  const { port } = server.address() as { port: number };

  let closing: Promise<void> | undefined;
  const close = (): Promise<void> =>
    (closing ??= new Promise<void>((resolve) => {
      for (const pair of pairs) {
        pair.client.destroy();
        pair.upstream?.destroy();
      }
      server.close(() => resolve());
    }));
  cleanUpWhen(options.until ?? 'test', close);

  return {
    url: `redis://127.0.0.1:${port}`,
    port,
    get connections() {
      return pairs.size;
    },
    get accepted() {
      return accepted;
    },
    get isCut() {
      return cutMode !== undefined;
    },
    cut(mode = 'blackhole') {
      cutMode = mode;
      for (const pair of pairs) {
        if (mode === 'reset') {
          pair.client.resetAndDestroy();
          pair.upstream?.destroy();
        } else {
          // pause() stops reading from the kernel: what either side sends waits in its buffers, as over a dead link.
          pair.client.pause();
          pair.upstream?.pause();
        }
      }
    },
    restore() {
      cutMode = undefined;
      for (const pair of pairs) {
        if (pair.upstream === undefined) connectUpstream(pair);
        else {
          pair.client.resume();
          pair.upstream.resume();
        }
      }
    },
    close,
  };
}
