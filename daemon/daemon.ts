import { setTimeout as delay } from 'node:timers/promises';
import { randomBytes } from 'node:crypto';
import { readdir, rename, stat, unlink, writeFile } from 'node:fs/promises';
import type { Server } from 'node:net';
import { join, resolve } from 'node:path';
import type { Readable, Writable } from 'node:stream';
import { CacheError, isCacheError } from '../src/errors.js';
import { LevelStore, type LevelStoreOptions } from '../src/level/level-store.js';
import type { EncodedValue, ScopeUsage, VerifyReport } from '../src/store.js';
import { LocalBackend } from '../src/local-backend.js';
import type { LockSnapshotEntry } from '../src/lock-table.js';
import { parseItemKey, type Scope } from '../src/scope-path.js';
import { VERSION } from '../src/version.js';
import { defaultDataDir, defaultSocketPath } from '../src/wire/paths.js';
import { type GcResult, type LockInfo, PROTOCOL_VERSION, type ScopeStatus, STATUS_MAX_SCOPES, type StatusResult } from '../src/wire/protocol.js';
import { heldError } from './data-directory-holder.js';
import { type Link, listen, serveStreams } from './listen.js';
import { oneLogLine } from './log-text.js';
import { prepareSocketDirectory } from './prepare-socket-directory.js';
import type { DaemonContext, Session } from './session.js';
import type { TierOptions } from './tier-options.js';

export interface DaemonOptions {
  /** Where to listen; default from `HOARD_SOCKET` or the XDG runtime directory. Ignored with `stdio`. */
  socketPath?: string;
  /** The LevelDB directory; default from `HOARD_DATA_DIR` or the XDG cache directory. */
  dataDir?: string;
  /** Stop after this long with no open connection; default 15 minutes, 0 never. */
  idleTimeoutMs?: number;
  /** Serve one client over these streams instead of a socket, and stop when the input ends. */
  stdio?: { input: Readable; output: Writable };
  /** The largest message accepted, in bytes; default 64 MiB. */
  maxMessageBytes?: number;
  /**
   * The most bytes of a value that one answer carries to a client that reads in chunks (larger values go as chunked
   * items, read with `cache/readChunk` this many bytes at a time); default 1 MiB, and always within a message.
   */
  chunkMaxBytes?: number;
  /**
   * How many of one connection's requests may wait for locks at once; past it, a request that would wait is refused
   * with `CACHE_TOO_MANY_WAITERS`. Default 10,000.
   */
  maxWaitersPerConnection?: number;
  /** Flush every write to the disk before acknowledging it, so that it survives a power loss; default `false`. */
  sync?: boolean;
  /** The budget of the in-memory layer of recently used values, in bytes; 0 turns it off. Default 32 MiB. */
  memoryCacheBytes?: number;
  /**
   * The size limit of the items, in bytes as `LevelStore` counts them; `Infinity` for none. Default: the smaller of
   * 10 GiB and a tenth of the data directory's filesystem (see README).
   */
  maxSizeBytes?: number;
  /**
   * A shared second tier on Redis, and the top-level scopes shared through it (see README's "Sharing beyond one
   * machine"); default none: every scope stays on this machine.
   */
  tier?: TierOptions;
  /**
   * Where log lines go; default standard error. Each is one line: control characters and line separators are
   * escaped, and a line is cut at 4096 characters.
   */
  log?: (line: string) => void;
}

/** A running daemon. */
export interface Daemon {
  readonly socketPath: string | null;
  readonly dataDir: string;
  /** Resolves once the daemon has stopped, for whatever reason. */
  readonly closed: Promise<void>;
  /** Stops the daemon through its one shutdown path; resolves when it has stopped. */
  close(): Promise<void>;
}

const IDLE_TIMEOUT_MS = 15 * 60 * 1000;
/** How long stopping waits for clients to take the last answers. */
const FLUSH_TIMEOUT_MS = 1000;
const MAX_MESSAGE_BYTES = 64 * 1024 * 1024;
/** The default of {@link DaemonOptions.chunkMaxBytes}. */
const CHUNK_MAX_BYTES = 1024 * 1024;
/** Room in a message for what an answer holds besides a value's bytes. */
const ANSWER_ENVELOPE_BYTES = 1024;

/**
 * The chunk size clients are offered: at most `chunkMaxBytes`, and small enough that a value of that many bytes
 * (base64 in JSON: 4 characters per 3 bytes) and its answer fit in a message of `maxMessageBytes`.
 */
function chunkBytesWithin(chunkMaxBytes: number, maxMessageBytes: number): number {
  if (!(Number.isSafeInteger(chunkMaxBytes) && chunkMaxBytes >= 1)) throw new TypeError(`chunkMaxBytes must be a whole number of at least 1, not ${String(chunkMaxBytes)}`);
  return Math.max(1, Math.min(chunkMaxBytes, Math.floor(((maxMessageBytes - ANSWER_ENVELOPE_BYTES) * 3) / 4)));
}
/** How often an idle daemon checks that its data directory was not deleted or replaced (writes check it each time). */
const DIRECTORY_CHECK_MS = 1000;
/**
 * Far more than any tool waits for at once (a waiter costs a few KiB, so 10,000 are tens of MiB), and few enough
 * that dropping them all when the connection closes takes milliseconds.
 */
export const MAX_WAITERS_PER_CONNECTION = 10_000;
const keepBytes = { encode: (value: EncodedValue) => value, decode: (value: EncodedValue) => value };
/**
 * How many top-level scopes get hit and miss counts of their own: beyond it, hits and misses of new names count in
 * the totals only, so that a client inventing scope names cannot grow the daemon's memory.
 */
export const MAX_COUNTED_SCOPES = 10_000;

/** A held lock or waiting request as `daemon/locks` gives it: the key parsed back into scope and id. */
function lockInfo(entry: LockSnapshotEntry): LockInfo {
  const subtree = entry.mode === 'subtree';
  // A subtree lock's key is its scope's prefix, which with `:` after it reads as the key of an empty id in that scope.
  const { scope, id } = parseItemKey(subtree ? `${entry.key}:` : entry.key);
  return {
    scope: [...scope.path],
    id: subtree ? null : id,
    mode: entry.mode,
    state: entry.state,
    client: entry.owner?.name ?? null,
    pid: entry.owner?.pid ?? null,
    sinceMs: entry.sinceMs,
  };
}

/** What the start-up line says of the tier: where, what it shares, and how. */
function tierText(tier: TierOptions | undefined): string {
  if (!tier) return '';
  const shared = Object.entries(tier.sharing).map(([name, sharing]) => `${name === '' ? '(root)' : JSON.stringify(name).slice(1, -1)}=${sharing}`);
  return `, shared tier ${tier.urls.join(',')}${tier.cluster ? ' (cluster)' : ''} sharing ${shared.join(', ')}${tier.strict ? ', strict' : ''}`;
}

/** The bytes of the files under `directory`, its subdirectories' (the files of large values) included. */
async function directorySize(directory: string): Promise<number> {
  let total = 0;
  for (const entry of await readdir(directory, { withFileTypes: true }).catch(() => [])) {
    const path = join(directory, entry.name);
    if (entry.isDirectory()) total += await directorySize(path);
    else if (entry.isFile()) total += (await stat(path).catch(() => ({ size: 0 }))).size;
  }
  return total;
}

/** Logs what other users could read in the data directory when it opened, and whether it is private now. */
function warnOfLoosePaths(store: LevelStore, log: (line: string) => void): void {
  // Inside a private data directory no one else reaches a loose file (LevelDB makes its files with the process's umask,
  // which `startDaemon` in another program leaves alone): those are made private without a word.
  if (!store.loosePaths.some((loose) => loose.path === store.directory)) return;
  const octal = (mode: number): string => `0${mode.toString(8)}`;
  const [first, ...others] = store.loosePaths;
  const stuck = store.loosePaths.filter((loose) => !loose.madePrivate);
  const more = others.length > 0 ? ` and ${others.length} more of its files and directories` : '';
  log(
    `warning: other users could read or enter ${first!.path} (mode ${octal(first!.mode)})${more}; ` +
      (stuck.length === 0
        ? 'they are private now (directories 0700, files 0600)'
        : `${stuck.length} could not be changed (first: ${stuck[0]!.path}, mode ${octal(stuck[0]!.mode)}): make them private yourself (chmod go-rwx)`),
  );
}

/** The file whose token a client sends back to read values' files by path, in the data directory. */
export const PROBE_FILE = 'reference-probe';

/**
 * Writes a new token to the probe file (0600, through a temporary file and a rename, so a reader never sees half of
 * one): a client that reads it back proves that it opens the daemon's files by their paths. One token per start.
 */
async function writeProbe(directory: string): Promise<{ probe: string; blobDirectory: string; token: Buffer }> {
  const token = randomBytes(32).toString('hex');
  const probe = join(directory, PROBE_FILE);
  const temporary = `${probe}.new`;
  await unlink(temporary).catch(() => {});
  await writeFile(temporary, token, { mode: 0o600, flag: 'wx' });
  await rename(temporary, probe);
  return { probe, blobDirectory: join(directory, 'blobs'), token: Buffer.from(token, 'utf8') };
}

/** The `limit` largest top-level scopes by size (ties: the first name), and the count and figures of the rest. */
class LargestScopes {
  readonly #limit: number;
  /** A heap whose root is the smallest scope kept, so that a larger one replaces it in O(log n). */
  readonly #heap: { name: string; bytes: number; items: number }[] = [];
  readonly others = { count: 0, sizeBytes: 0, items: 0 };

  constructor(limit: number) {
    this.#limit = limit;
  }

  add(name: string, size: ScopeUsage): void {
    const entry = { name, bytes: size.bytes, items: size.items };
    if (this.#heap.length < this.#limit) {
      this.#heap.push(entry);
      this.#up(this.#heap.length - 1);
      return;
    }
    const smallest = this.#heap[0]!;
    if (this.#smaller(entry, smallest)) return this.#other(entry);
    this.#other(smallest);
    this.#heap[0] = entry;
    this.#down(0);
  }

  /** The names kept, in name order. */
  names(): string[] {
    return this.#heap.map((entry) => entry.name).sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  }

  #other(entry: { bytes: number; items: number }): void {
    this.others.count++;
    this.others.sizeBytes += entry.bytes;
    this.others.items += entry.items;
  }

  #smaller(a: { name: string; bytes: number }, b: { name: string; bytes: number }): boolean {
    return a.bytes < b.bytes || (a.bytes === b.bytes && a.name > b.name);
  }

  #up(at: number): void {
    const heap = this.#heap;
    while (at > 0) {
      const parent = (at - 1) >> 1;
      if (!this.#smaller(heap[at]!, heap[parent]!)) return;
      [heap[at], heap[parent]] = [heap[parent]!, heap[at]!];
      at = parent;
    }
  }

  #down(at: number): void {
    const heap = this.#heap;
    for (;;) {
      let least = at;
      for (const child of [2 * at + 1, 2 * at + 2]) if (child < heap.length && this.#smaller(heap[child]!, heap[least]!)) least = child;
      if (least === at) return;
      [heap[at], heap[least]] = [heap[least]!, heap[at]!];
      at = least;
    }
  }
}

/**
 * Starts a daemon in this process: opens the data directory, holding its instance lock (`instance-lock/`, see
 * `src/level/exclusive-open.ts`: one daemon per data directory), then listens on the socket and resolves once it
 * accepts connections.
 * @throws CacheError `CACHE_LOCKED` when another daemon holds the data directory (naming its pid and socket) or
 * answers on the socket, `CACHE_UNSAFE_DIRECTORY` or
 * `CACHE_SOCKET_PATH_TOO_LONG` for a socket path it will not use.
 */
export async function startDaemon(options: DaemonOptions = {}): Promise<Daemon> {
  const sink = options.log ?? ((line: string) => process.stderr.write(`${new Date().toISOString()} hoard[${process.pid}] ${line}\n`));
  const log = (line: string): void => sink(oneLogLine(line));
  const socketPath = options.stdio ? null : (options.socketPath ?? defaultSocketPath());
  const dataDir = options.dataDir ?? defaultDataDir();
  const idleTimeoutMs = options.idleTimeoutMs ?? IDLE_TIMEOUT_MS;
  const { maxWaitersPerConnection } = options;
  if (maxWaitersPerConnection !== undefined && !(Number.isSafeInteger(maxWaitersPerConnection) && maxWaitersPerConnection >= 1)) {
    throw new TypeError(`maxWaitersPerConnection must be a whole number of at least 1, not ${String(maxWaitersPerConnection)}`);
  }
  const { maxSizeBytes } = options;
  if (maxSizeBytes !== undefined && !(typeof maxSizeBytes === 'number' && maxSizeBytes > 0 && !Number.isNaN(maxSizeBytes))) {
    throw new TypeError(`maxSizeBytes must be a number of bytes above 0 (Infinity for no limit), not ${String(maxSizeBytes)}`);
  }
  const maxMessageBytes = options.maxMessageBytes ?? MAX_MESSAGE_BYTES;
  if (socketPath) await prepareSocketDirectory(socketPath);

  let store: LevelStore;
  try {
    const storeOptions: LevelStoreOptions = {
      sync: options.sync ?? false,
      memoryCacheBytes: options.memoryCacheBytes,
      maxSizeBytes,
      holder: { role: 'daemon', socketPath: socketPath && resolve(socketPath) },
      log,
      // Serving a deleted cache, or one another process now writes, helps no one: the next client starts a new daemon.
      onLost: () => void stop('the data directory is lost'),
    };
    store = await LevelStore.open(dataDir, storeOptions);
  } catch (error) {
    throw isCacheError(error, 'CACHE_LOCKED') ? await heldError(dataDir, socketPath, error) : error;
  }
  warnOfLoosePaths(store, log);
  // Without a probe, clients read every value through the connection, as before references.
  const references = await writeProbe(store.directory).catch((error: unknown) => {
    log(`values are sent as bytes only: cannot write the reference probe (${error instanceof Error ? error.message : String(error)})`);
    return undefined;
  });
  // Loaded only for a tier: the Redis client is most of the daemon's modules, and a daemon without a tier (the editor's,
  // started on demand) would load them for nothing.
  const tier = options.tier && new (await import('./redis-tier.js')).RedisTier({ ...options.tier, dataDir: store.directory, log });
  const backend = new LocalBackend<EncodedValue, EncodedValue>(store, keepBytes, { log, ...(tier && { tier }) });
  const startedAt = Date.now();
  /** Open connections, each with the way to end its streams. */
  const connections = new Map<Session, Link>();
  let handles = 0;
  let server: Server | undefined;
  let idleTimer: NodeJS.Timeout | undefined;
  // A directory deleted while the daemon only reads, or is idle, is noticed too (one stat a second, whatever the load);
  // the store then calls onLost, which stops the daemon.
  const directoryCheck = setInterval(() => {
    try {
      store.checkDirectory();
    } catch {
      // Lost: the daemon is stopping.
    }
  }, DIRECTORY_CHECK_MS).unref();
  const counters = { hits: 0, misses: 0 };
  /** Hits and misses per top-level scope, for at most {@link MAX_COUNTED_SCOPES} of them. */
  const scopeCounters = new Map<string, { hits: number; misses: number }>();
  let stopping: Promise<void> | undefined;
  let markClosed!: () => void;
  const closed = new Promise<void>((resolve) => (markClosed = resolve));

  const context: DaemonContext = {
    backend,
    version: VERSION,
    maxMessageBytes,
    maxWaitersPerConnection: options.maxWaitersPerConnection ?? MAX_WAITERS_PER_CONNECTION,
    waitingClears: { count: 0 },
    referenceReads: 0,
    chunkedReads: 0,
    chunkMaxBytes: chunkBytesWithin(options.chunkMaxBytes ?? CHUNK_MAX_BYTES, maxMessageBytes),
    filePath: (name) => store.filePath(name),
    readFile: (file) => store.readFile(file),
    references,
    count(topScope, hit) {
      if (hit) counters.hits++;
      else counters.misses++;
      let counts = scopeCounters.get(topScope);
      if (!counts) {
        if (scopeCounters.size >= MAX_COUNTED_SCOPES) return;
        scopeCounters.set(topScope, (counts = { hits: 0, misses: 0 }));
      }
      if (hit) counts.hits++;
      else counts.misses++;
    },
    nextHandle: () => ++handles,
    log,
    requestStop: (reason) => void stop(reason),
    locks: () => ({ locks: backend.lockSnapshot().map(lockInfo) }),
    async gc({ dryRun }): Promise<GcResult> {
      const report = await backend.gc({ dryRun });
      const { evictedItems, evictedBytes, expiredItems, expiredBytes } = report;
      // The daemon's store counts, so the size is known.
      return { dryRun, evictedItems, evictedBytes, expiredItems, expiredBytes, sizeBytes: report.sizeBytes ?? 0 };
    },
    async verify(verifyOptions): Promise<VerifyReport> {
      const report = await backend.verify(verifyOptions);
      if (!report) throw new CacheError('CACHE_INTERNAL', 'The daemon\u2019s store does not count its items.');
      return report;
    },
    async status(scope?: Scope): Promise<StatusResult> {
      // The slow parts go first, so that every other figure is taken at the same moment.
      const sizeOnDiskBytes = await directorySize(store.directory);
      const counted = scope ? await backend.scopeUsage(scope) : undefined;
      const locks = backend.lockStats();
      const memory = store.memoryCache();
      const usage = backend.usage();
      const kept = backend.counters();
      // The largest by size (then by name), listed in name order; the rest only summed, so the answer stays small. One
      // pass keeps the largest in a bounded heap: a million scopes cost no million objects and no sort.
      const largest = new LargestScopes(STATUS_MAX_SCOPES);
      const empty = { bytes: 0, items: 0 };
      for (const [name, size] of usage?.scopes ?? []) largest.add(name, size);
      // Scopes with figures but no data left (all evicted, say): the counters of both kinds are bounded.
      for (const name of [...scopeCounters.keys(), ...kept.scopes.keys()]) if (!usage?.scopes.has(name)) largest.add(name, empty);
      const otherScopes = largest.others;
      const scopes: ScopeStatus[] = largest.names().map((name) => {
        const size = usage?.scopes.get(name);
        const reads = scopeCounters.get(name);
        const work = kept.scopes.get(name);
        return {
          name,
          sizeBytes: size?.bytes ?? 0,
          items: size?.items ?? 0,
          hits: reads?.hits ?? 0,
          misses: reads?.misses ?? 0,
          evictions: work?.evictedItems ?? 0,
          expirations: work?.expiredItems ?? 0,
        };
      });
      const limitBytes = usage?.limitBytes ?? null;
      return {
        pid: process.pid,
        version: VERSION,
        protocolVersion: PROTOCOL_VERSION,
        uptimeMs: Date.now() - startedAt,
        socketPath,
        dataDir: store.directory,
        sizeOnDiskBytes,
        connections: connections.size,
        locksHeld: locks.held,
        waiters: locks.waiting,
        hits: counters.hits,
        misses: counters.misses,
        sizeBytes: usage?.bytes ?? 0,
        limitBytes: limitBytes === null || limitBytes === Infinity ? null : limitBytes,
        items: usage?.items ?? 0,
        pinnedBytes: usage?.pinnedBytes ?? 0,
        reservedBytes: usage?.reservedBytes ?? 0,
        referenceReads: context.referenceReads,
        chunkedReads: context.chunkedReads,
        evictions: kept.evictedItems,
        evictedBytes: kept.evictedBytes,
        expirations: kept.expiredItems,
        housekeepingFailures: backend.housekeepingFailures(),
        scopes,
        otherScopes,
        ...(scope && { scope: { path: [...scope.path], sizeBytes: counted?.bytes ?? 0, items: counted?.items ?? 0 } }),
        memoryCacheBytes: memory.bytes,
        memoryCacheLimitBytes: memory.limitBytes,
        rssBytes: process.memoryUsage.rss(),
        tier: backend.tierStatus(),
      };
    },
  };

  function armIdleTimer(): void {
    clearTimeout(idleTimer);
    if (idleTimeoutMs > 0 && connections.size === 0 && socketPath) {
      idleTimer = setTimeout(() => void stop(`idle for ${idleTimeoutMs} ms`), idleTimeoutMs);
      idleTimer.unref();
    }
  }

  /** Keeps an open connection until its session ends, then arms the idle timer. */
  function track(session: Session, link: Link, onClosed?: () => void): void {
    connections.set(session, link);
    clearTimeout(idleTimer);
    void session.closed.then(() => {
      connections.delete(session);
      onClosed?.();
      armIdleTimer();
    });
  }

  /**
   * The one shutdown path: stop accepting, remove the socket (while the database lock is still held), fail
   * waiters, finish running writes and close the database, then end every connection once its last answers are out.
   */
  function stop(reason: string): Promise<void> {
    stopping ??= (async () => {
      log(`stopping: ${reason}`);
      clearTimeout(idleTimer);
      clearInterval(directoryCheck);
      server?.close();
      try {
        // The socket goes while this daemon still holds the database lock, so it never removes a successor's.
        if (socketPath) await unlink(socketPath).catch(() => {});
        await backend.close();
      } catch (error) {
        log(`closing the database failed: ${error instanceof Error ? error.message : String(error)}`);
      } finally {
        // Answers already given (the one to `shutdown`, the waiters' CACHE_CLOSED) are sent before the streams end,
        // unless a client has stopped reading: then its connection is cut after a second.
        const links = [...connections.values()];
        const flushed = await Promise.race([
          Promise.all(links.map((link) => link.drained())).then(() => true),
          delay(FLUSH_TIMEOUT_MS, false, { ref: false }),
        ]);
        for (const link of links) flushed ? link.end() : link.destroy();
        log('stopped');
        markClosed();
      }
    })();
    return stopping;
  }

  try {
    // Before serving: the tier drops the local copies it cannot vouch for, and follows changes from then on.
    await backend.openTier();
    if (options.stdio) {
      const { input, output } = options.stdio;
      const { session, link } = serveStreams(context, input, output, {
        label: 'stdio',
        maxMessageBytes,
        destroy: () => input.destroy(),
        onBroken: (error) => {
          log(`stdio: unreadable input (${error.message}); stopping`);
          void stop('unreadable input on stdin');
        },
      });
      track(session, link, () => void stop('stdin closed'));
      input.once('end', () => void stop('stdin closed'));
      log(`serving one client over stdio, data in ${store.directory}`);
    } else {
      server = await listen(context, socketPath!, { maxMessageBytes, onConnection: (session, link) => track(session, link) });
      armIdleTimer();
      const limit = backend.usage()?.limitBytes;
      const sizeLimit = limit === undefined || limit === null || limit === Infinity ? 'no size limit' : `size limit ${limit} bytes`;
      log(`listening on ${socketPath}, data in ${store.directory}, ${sizeLimit}${options.sync ? ', every write synced to disk' : ''}${tierText(options.tier)}`);
    }
  } catch (error) {
    clearInterval(directoryCheck);
    server?.close();
    await backend.close();
    throw error;
  }

  return { socketPath, dataDir: store.directory, closed, close: () => stop('closed by its owner') };
}
