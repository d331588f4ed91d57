import { once } from 'node:events';
import { chmod, lstat, unlink } from 'node:fs/promises';
import { connect as netConnect, createServer, type Server, Socket, type SocketConstructorOpts } from 'node:net';
import type { Readable, Writable } from 'node:stream';
import { CacheError } from '../src/errors.js';
import { lentReads } from '../src/wire/lent-reads.js';
import { Initialize, lspFrame } from '../src/wire/protocol.js';
import { serveBinary } from './serve-binary.js';
import { serveJson } from './serve-json.js';
import { type DaemonContext, Session } from './session.js';

/** One client's byte streams as the daemon ends them: after the last answers, or at once. */
export interface Link {
  end(): void;
  destroy(): void;
  /** Resolves once the answers given so far are handed to the operating system. */
  drained(): Promise<void>;
}

export interface ServeOptions {
  label: string;
  maxMessageBytes: number;
  /** Cuts the streams at once. */
  destroy(): void;
  /** Hears of input that breaks the framing: the streams cannot be trusted after it. */
  onBroken(error: Error): void;
}

/**
 * Serves one client on `input` and `output`, and negotiates its transport, all here: every connection starts in
 * JSON-RPC, and an `initialize` that is the first message and asks for `'binary'` (and succeeds) is answered in
 * JSON, after which both sides switch to binary frames. Returns the session and the way to end its streams.
 */
export function serveStreams(context: DaemonContext, input: Readable, output: Writable, options: ServeOptions): { session: Session; link: Link } {
  const session = new Session(context, options.label);
  /** The transport in use: JSON until a binary upgrade. */
  let transport: Pick<Link, 'end' | 'drained'> = serveJson(input, output, session, {
    maxMessageBytes: options.maxMessageBytes,
    onBroken: options.onBroken,
    destroy: options.destroy,
    upgrade: (message) => {
      const { method, id, params } = message as { method?: unknown; id?: unknown; params?: unknown };
      if (method !== Initialize.method || (typeof id !== 'number' && typeof id !== 'string')) return undefined;
      let result;
      try {
        // Read through the declaration, as the JSON transport reads it.
        const initialize = Initialize.fromJson(params);
        if (!initialize.transports?.includes('binary')) return undefined;
        result = session.initialize(initialize, 'binary');
      } catch {
        // A refused initialize is answered in JSON, by the JSON transport.
        return undefined;
      }
      return () => {
        output.write(lspFrame({ jsonrpc: '2.0', id, result }));
        transport = serveBinary(input, output, session, { maxMessageBytes: options.maxMessageBytes, onBroken: options.onBroken });
      };
    },
  });
  const link: Link = { end: () => transport.end(), drained: () => transport.drained(), destroy: options.destroy };
  return { session, link };
}

/**
 * The accepted connection `accepted` (paused at accept) as a socket that reads into one buffer of its own
 * ({@link lentReads}), as the client's do: `net.createServer` takes no `onread` on Node 20, so the connection's handle
 * moves to a new socket made with it, and the server's own socket object, left without it, is destroyed.
 */
function withLentReads(accepted: Socket): Socket {
  const holder = accepted as unknown as { _handle: unknown };
  const handle = holder._handle;
  if (!handle) return accepted;
  holder._handle = null;
  accepted.destroy();
  const options = { handle, readable: true, writable: true, onread: lentReads(() => socket) };
  const socket: Socket = new Socket(options as SocketConstructorOpts);
  return socket;
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
 * Removes a socket file left by a daemon that is gone; anything else at the path (a regular file, a directory, a
 * symlink) is the user's, and is refused rather than replaced.
 * @throws CacheError `CACHE_UNSAFE_DIRECTORY`.
 */
async function removeStaleSocket(socketPath: string): Promise<void> {
  let info;
  try {
    info = await lstat(socketPath);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw error;
  }
  if (!info.isSocket()) {
    const kind = info.isFile() ? 'a regular file' : info.isDirectory() ? 'a directory' : info.isSymbolicLink() ? 'a symbolic link' : 'not a socket';
    throw new CacheError(
      'CACHE_UNSAFE_DIRECTORY',
      `${socketPath} is ${kind}, not a socket: hoard does not replace it. Choose another path with --socket or HOARD_SOCKET.`,
    );
  }
  await unlink(socketPath).catch(() => {});
}

/**
 * Listens on `socketPath` (mode 0600) and serves each connection; the caller holds the data directory's lock,
 * so a socket file already there is stale unless a daemon for another data directory answers on it.
 * @throws CacheError `CACHE_LOCKED` when another daemon answers on the socket, `CACHE_UNSAFE_DIRECTORY` when
 * something other than a socket is at the path.
 */
export async function listen(
  context: DaemonContext,
  socketPath: string,
  options: { maxMessageBytes: number; onConnection(session: Session, link: Link): void },
): Promise<Server> {
  if (await socketAnswers(socketPath)) {
    throw new CacheError('CACHE_LOCKED', `Another hoard daemon already listens on ${socketPath} (with another data directory).`);
  }
  await removeStaleSocket(socketPath);
  let accepted = 0;
  const server = createServer({ pauseOnConnect: true }, (connection) => {
    const socket = withLentReads(connection);
    const label = `connection ${++accepted}`;
    socket.on('error', () => {});
    // A stream that breaks the framing cannot be trusted again: that connection is closed, and only that one.
    const { session, link } = serveStreams(context, socket, socket, {
      label,
      maxMessageBytes: options.maxMessageBytes,
      destroy: () => socket.destroy(),
      onBroken: (error) => {
        context.log(`closing ${label}: it sent ${error.message}`);
        socket.destroy();
      },
    });
    options.onConnection(session, link);
  });
  server.listen(socketPath);
  try {
    await once(server, 'listening');
    await chmod(socketPath, 0o600);
  } catch (error) {
    server.close();
    throw error;
  }
  return server;
}
