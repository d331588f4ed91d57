import { once } from 'node:events';
import { chmod, unlink } from 'node:fs/promises';
import { connect as netConnect, createServer, type Server } from 'node:net';
import type { Readable, Writable } from 'node:stream';
import { createMessageConnection, type MessageWriter, StreamMessageWriter } from 'vscode-jsonrpc/node';
import { CacheError } from '../src/errors.js';
import { FramedMessageReader } from '../src/wire/framed-message-reader.js';
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

/**
 * Serves one client on `input` and `output`, and negotiates its transport, all here: every connection starts in
 * JSON-RPC, and an `initialize` that is the first message and asks for `'binary'` (and succeeds) is answered in
 * JSON, after which both sides switch to binary frames. Returns the session and the way to end its streams.
 */
export function serveStreams(context: DaemonContext, input: Readable, output: Writable, options: ServeOptions): { session: Session; link: Link } {
  const session = new Session(context, options.label);
  const unflushed = new Set<Promise<void>>();
  const writer = trackWrites(new StreamMessageWriter(output), unflushed);
  /** The transport in use: JSON until a binary upgrade. */
  let transport: Pick<Link, 'end' | 'drained'> = {
    end: () => connection.end(),
    drained: async () => void (await Promise.all(unflushed)),
  };
  const reader = new FramedMessageReader(input, {
    maxMessageBytes: options.maxMessageBytes,
    reply: (response) => void writer.write(response).catch(() => {}),
    upgrade: (message) => {
      const { method, id, params } = message as { method?: unknown; id?: unknown; params?: unknown };
      if (method !== Initialize.method || (typeof id !== 'number' && typeof id !== 'string')) return undefined;
      const transports = (params as { transports?: unknown } | undefined)?.transports;
      if (!Array.isArray(transports) || !transports.includes('binary')) return undefined;
      let result;
      try {
        result = session.initialize(Initialize.fromJson(params), 'binary');
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
  reader.onError(options.onBroken);
  const connection = createMessageConnection(reader, writer);
  serveJson(connection, session, { destroyTransport: options.destroy });
  const link: Link = { end: () => transport.end(), drained: () => transport.drained(), destroy: options.destroy };
  return { session, link };
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
 * Listens on `socketPath` (mode 0600) and serves each connection; the caller holds the data directory's lock,
 * so a socket file already there is stale unless a daemon for another data directory answers on it.
 * @throws CacheError `CACHE_LOCKED` when another daemon answers on the socket.
 */
export async function listen(
  context: DaemonContext,
  socketPath: string,
  options: { maxMessageBytes: number; onConnection(session: Session, link: Link): void },
): Promise<Server> {
  if (await socketAnswers(socketPath)) {
    throw new CacheError('CACHE_LOCKED', `Another hoard daemon already listens on ${socketPath} (with another data directory).`);
  }
  await unlink(socketPath).catch(() => {});
  let accepted = 0;
  const server = createServer((socket) => {
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
