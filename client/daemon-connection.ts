import { connect as netConnect, type Socket } from 'node:net';
import type { Readable, Writable } from 'node:stream';
import {
  CancellationTokenSource,
  createMessageConnection,
  type MessageConnection,
  type NotificationType,
  type RequestType,
  type RequestType0,
  ResponseError,
  SocketMessageReader,
  SocketMessageWriter,
  StreamMessageReader,
  StreamMessageWriter,
} from 'vscode-jsonrpc/node';
import { CacheError, type CacheErrorCode } from '../src/errors.js';
import { Initialize, type InitializeResult, PROTOCOL_VERSION } from '../src/protocol.js';
import { quietReader } from '../src/quiet-reader.js';

export interface RequestOptions<R> {
  /** Aborting rejects the call at once with the signal's reason and cancels the request at the daemon. */
  signal?: AbortSignal | undefined;
  /** Receives a result that arrives after the call was aborted, so that a lock granted meanwhile can be released. */
  abandoned?: (result: R) => void;
}

/** Whether connecting failed because no daemon listens (as opposed to a daemon that refused us). */
export function isNoDaemon(error: unknown): boolean {
  const code = (error as { code?: unknown })?.code;
  return code === 'ENOENT' || code === 'ECONNREFUSED';
}

function lostError(): CacheError {
  return new CacheError('CACHE_CONNECTION_LOST', 'The connection to the hoard daemon closed; the next call reconnects.');
}

/** One initialized JSON-RPC connection to a daemon, with the daemon's errors turned back into {@link CacheError}s. */
export class DaemonConnection {
  readonly #connection: MessageConnection;
  readonly #endTransport: () => void;
  #lost = false;
  #closedByUs = false;
  #info?: InitializeResult;
  readonly lostPromise: Promise<void>;

  private constructor(connection: MessageConnection, endTransport: () => void) {
    this.#connection = connection;
    this.#endTransport = endTransport;
    this.lostPromise = new Promise((resolve) => {
      connection.onClose(() => {
        this.#lost = true;
        // Pending requests hang until dispose, which rejects them.
        connection.dispose();
        endTransport();
        resolve();
      });
    });
    connection.onError(() => connection.end());
    connection.listen();
  }

  /** Connects to the daemon on `socketPath` and performs the handshake; rejects with the socket's error when nobody listens. */
  static async open(socketPath: string, options: { clientName: string }): Promise<DaemonConnection> {
    const socket = await new Promise<Socket>((resolve, reject) => {
      const attempt = netConnect(socketPath);
      attempt.once('connect', () => {
        attempt.removeListener('error', reject);
        resolve(attempt);
      });
      attempt.once('error', reject);
    });
    socket.on('error', () => {});
    const connection = createMessageConnection(quietReader(new SocketMessageReader(socket)), new SocketMessageWriter(socket));
    return DaemonConnection.#initialize(new DaemonConnection(connection, () => socket.end()), options);
  }

  /** Speaks to a daemon over a pair of streams, such as a child's stdout and stdin. */
  static async overStreams(input: Readable, output: Writable, options: { clientName: string; endTransport?: () => void }): Promise<DaemonConnection> {
    const connection = createMessageConnection(quietReader(new StreamMessageReader(input)), new StreamMessageWriter(output));
    return DaemonConnection.#initialize(new DaemonConnection(connection, options.endTransport ?? (() => output.end())), options);
  }

  static async #initialize(daemon: DaemonConnection, options: { clientName: string }): Promise<DaemonConnection> {
    try {
      daemon.#info = await daemon.request(Initialize, {
        clientName: options.clientName,
        pid: process.pid,
        protocolVersion: PROTOCOL_VERSION,
      });
    } catch (error) {
      await daemon.close();
      throw error;
    }
    return daemon;
  }

  /** What the daemon said of itself in the handshake. */
  get info(): InitializeResult {
    return this.#info!;
  }

  /** Whether the connection has closed. */
  get lost(): boolean {
    return this.#lost;
  }

  request<P, R>(type: RequestType<P, R, void>, params: P, options?: RequestOptions<R>): Promise<R>;
  request<R>(type: RequestType0<R, void>): Promise<R>;
  request<P, R>(type: RequestType<P, R, void> | RequestType0<R, void>, params?: P, options: RequestOptions<R> = {}): Promise<R> {
    const { signal, abandoned } = options;
    if (signal?.aborted) return Promise.reject(signal.reason);
    if (this.#lost) return Promise.reject(this.#closedByUs ? closedError() : lostError());
    const cancellation = signal ? new CancellationTokenSource() : undefined;
    let sent: Promise<R>;
    try {
      const args: unknown[] = params === undefined ? [] : [params];
      if (cancellation) args.push(cancellation.token);
      const send = this.#connection.sendRequest.bind(this.#connection) as (...rest: unknown[]) => Promise<R>;
      sent = send(type, ...args);
    } catch {
      return Promise.reject(this.#closedByUs ? closedError() : lostError());
    }
    const mapped = sent.catch((error: unknown) => {
      throw this.#toCacheError(error);
    });
    if (!signal) return mapped;
    return new Promise<R>((resolve, reject) => {
      const onAbort = (): void => {
        cancellation!.cancel();
        reject(signal.reason);
      };
      signal.addEventListener('abort', onAbort, { once: true });
      mapped.then(
        (result) => {
          signal.removeEventListener('abort', onAbort);
          if (signal.aborted) abandoned?.(result);
          else resolve(result);
        },
        (error: unknown) => {
          signal.removeEventListener('abort', onAbort);
          reject(error);
        },
      );
    });
  }

  /** Sends a notification; one sent over a lost connection is dropped, since the daemon released everything already. */
  async notify<P>(type: NotificationType<P>, params: P): Promise<void> {
    if (this.#lost) return;
    try {
      await this.#connection.sendNotification(type, params as never);
    } catch {
      // The connection closed meanwhile: same as above.
    }
  }

  #toCacheError(error: unknown): unknown {
    if (error instanceof ResponseError) {
      const code = (error.data as { code?: unknown } | undefined)?.code;
      if (typeof code === 'string' && code.startsWith('CACHE_')) return new CacheError(code as CacheErrorCode, error.message);
      return this.#closedByUs ? closedError() : lostError();
    }
    return error;
  }

  /** Closes the connection; pending calls reject with `CACHE_CLOSED`. */
  async close(): Promise<void> {
    if (!this.#lost) {
      this.#closedByUs = true;
      this.#endTransport();
    }
    await this.lostPromise;
  }
}

function closedError(): CacheError {
  return new CacheError('CACHE_CLOSED', 'The cache is closed.');
}
