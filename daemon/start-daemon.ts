import { once } from 'node:events';
import { setTimeout as delay } from 'node:timers/promises';
import { readdir, stat, unlink, chmod } from 'node:fs/promises';
import { connect as netConnect, createServer, type Server } from 'node:net';
import { join } from 'node:path';
import type { Readable, Writable } from 'node:stream';
import { createMessageConnection, type MessageWriter, StreamMessageWriter } from 'vscode-jsonrpc/node';
import { CacheError, isCacheError } from '../src/errors.js';
import { LevelStore } from '../src/level-store.js';
import type { EncodedValue } from '../src/store.js';
import { LocalBackend } from '../src/local-backend.js';
import { lspFrame, PROTOCOL_VERSION, type StatusResult } from '../src/protocol.js';
import { FramedMessageReader } from './framed-message-reader.js';
import { VERSION } from '../src/version.js';
import { defaultDataDir, defaultSocketPath } from '../src/wire/paths.js';
import { prepareSocketDirectory } from './prepare-socket-directory.js';
import { binaryUpgrade, serveJson } from './serve.js';
import { serveBinary } from './serve-binary.js';
import { type DaemonContext, Session } from './session.js';

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
  /** Flush every write to the disk before acknowledging it, so that it survives a power loss; default `false`. */
  sync?: boolean;
  /** The budget of the in-memory layer of recently used values, in bytes; 0 turns it off. Default 32 MiB. */
  memoryCacheBytes?: number;
  /** Where log lines go; default standard error. */
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
const keepBytes = { encode: (value: EncodedValue) => value, decode: (value: EncodedValue) => value };

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

/** Tracks every write of `writer` in `unflushed`, so that stopping can wait for the last answers (to `shutdown`, say). */
function trackWrites(writer: MessageWriter, unflushed: Set<Promise<void>>): MessageWriter {
  return {
    onError: writer.onError,
    onClose: writer.onClose,
    end: () => writer.end(),
    dispose: () => writer.dispose(),
    write(message) {
      const written = writer.write(message);
      const settled = written.catch(() => {});
      unflushed.add(settled);
      void settled.then(() => unflushed.delete(settled));
      return written;
    },
  };
}

/** One client's byte streams as the daemon ends them: after the last answers, or at once. */
interface Link {
  end(): void;
  destroy(): void;
  /** Resolves once the answers given so far are handed to the operating system. */
  drained(): Promise<void>;
}

/** Whether something accepts connections on the socket path. */
function socketAnswers(socketPath: string): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = netConnect(socketPath);
    probe.once('connect', () => (probe.destroy(), resolve(true)));
    probe.once('error', () => resolve(false));
  });
}

/**
 * Starts a daemon in this process: opens the data directory (its LevelDB lock is the instance lock: one daemon
 * per data directory), then listens on the socket and resolves once it accepts connections.
 * @throws CacheError `CACHE_LOCKED` when another daemon holds the data directory, `CACHE_UNSAFE_DIRECTORY` or
 * `CACHE_SOCKET_PATH_TOO_LONG` for a socket path it will not use.
 */
export async function startDaemon(options: DaemonOptions = {}): Promise<Daemon> {
  const log = options.log ?? ((line: string) => process.stderr.write(`${new Date().toISOString()} hoard[${process.pid}] ${line}\n`));
  const socketPath = options.stdio ? null : (options.socketPath ?? defaultSocketPath());
  const dataDir = options.dataDir ?? defaultDataDir();
  const idleTimeoutMs = options.idleTimeoutMs ?? IDLE_TIMEOUT_MS;
  const maxMessageBytes = options.maxMessageBytes ?? MAX_MESSAGE_BYTES;
  if (socketPath) await prepareSocketDirectory(socketPath);

  let store: LevelStore;
  try {
    store = await LevelStore.open(dataDir, { sync: options.sync ?? false, memoryCacheBytes: options.memoryCacheBytes });
  } catch (error) {
    if (isCacheError(error, 'CACHE_LOCKED')) {
      throw new CacheError('CACHE_LOCKED', `Another hoard daemon (or another program) holds the data directory ${dataDir}.`, {
        cause: error,
      });
    }
    throw error;
  }
  const backend = new LocalBackend<EncodedValue, EncodedValue>(store, keepBytes);
  const startedAt = Date.now();
  /** Open connections, each with the way to end its streams. */
  const connections = new Map<Session, Link>();
  let handles = 0;
  let accepted = 0;
  let server: Server | undefined;
  let idleTimer: NodeJS.Timeout | undefined;
  let stopping: Promise<void> | undefined;
  let markClosed!: () => void;
  const closed = new Promise<void>((resolve) => (markClosed = resolve));

  const context: DaemonContext = {
    backend,
    version: VERSION,
    maxMessageBytes,
    counters: { hits: 0, misses: 0 },
    nextHandle: () => ++handles,
    log,
    requestStop: (reason) => void stop(reason),
    async status(): Promise<StatusResult> {
      // The one slow part goes first, so that every other figure is taken at the same moment.
      const sizeOnDiskBytes = await directorySize(store.directory);
      const locks = backend.lockStats();
      const memory = store.memoryCache();
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
        hits: this.counters.hits,
        misses: this.counters.misses,
        memoryCacheBytes: memory.bytes,
        memoryCacheLimitBytes: memory.limitBytes,
        rssBytes: process.memoryUsage.rss(),
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

  /**
   * Serves one client on `input` and `output`: JSON-RPC first, switching to the binary transport when its
   * `initialize` asks for it. `onBroken` hears of input that breaks the framing.
   */
  function serveStreams(
    input: Readable,
    output: Writable,
    options: { label: string; destroy: () => void; onBroken: (error: Error) => void; onClosed?: () => void },
  ): void {
    const session = new Session(context, options.label);
    const unflushed = new Set<Promise<void>>();
    const writer = trackWrites(new StreamMessageWriter(output), unflushed);
    const reader = new FramedMessageReader(input, {
      maxMessageBytes,
      reply: (response) => void writer.write(response).catch(() => {}),
      upgrade: (message) => {
        const answer = binaryUpgrade(session, message);
        if (!answer) return undefined;
        return () => {
          output.write(lspFrame(answer));
          const binary = serveBinary(input, output, session, { maxMessageBytes, onBroken: options.onBroken });
          link.end = binary.end;
          link.drained = binary.drained;
        };
      },
    });
    reader.onError(options.onBroken);
    const connection = createMessageConnection(reader, writer);
    const link: Link = {
      end: () => connection.end(),
      destroy: options.destroy,
      drained: async () => void (await Promise.all(unflushed)),
    };
    connections.set(session, link);
    clearTimeout(idleTimer);
    serveJson(connection, session, { destroyTransport: options.destroy });
    void session.closed.then(() => {
      connections.delete(session);
      options.onClosed?.();
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
    if (options.stdio) {
      const { input, output } = options.stdio;
      serveStreams(input, output, {
        label: 'stdio',
        destroy: () => input.destroy(),
        onBroken: (error) => {
          log(`stdio: unreadable input (${error.message}); stopping`);
          void stop('unreadable input on stdin');
        },
        onClosed: () => void stop('stdin closed'),
      });
      input.once('end', () => void stop('stdin closed'));
      log(`serving one client over stdio, data in ${store.directory}`);
    } else {
      const path = socketPath!;
      // Holding the database lock, this is the only daemon for this data directory: a socket file left here is
      // stale unless a daemon for another data directory answers on it.
      if (await socketAnswers(path)) {
        throw new CacheError('CACHE_LOCKED', `Another hoard daemon already listens on ${path} (with another data directory).`);
      }
      await unlink(path).catch(() => {});
      server = createServer((socket) => {
        const label = `connection ${++accepted}`;
        socket.on('error', () => {});
        // A stream that breaks the framing cannot be trusted again: that connection is closed, and only that one.
        serveStreams(socket, socket, {
          label,
          destroy: () => socket.destroy(),
          onBroken: (error) => {
            log(`closing ${label}: it sent ${error.message}`);
            socket.destroy();
          },
        });
      });
      server.listen(path);
      await once(server, 'listening');
      await chmod(path, 0o600);
      armIdleTimer();
      log(`listening on ${path}, data in ${store.directory}${options.sync ? ', every write synced to disk' : ''}`);
    }
  } catch (error) {
    server?.close();
    await backend.close();
    throw error;
  }

  return { socketPath, dataDir: store.directory, closed, close: () => stop('closed by its owner') };
}
