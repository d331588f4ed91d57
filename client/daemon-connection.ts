import { connect as netConnect, type Socket } from 'node:net';
import type { Readable, Writable } from 'node:stream';
import {
  CancellationTokenSource,
  createMessageConnection,
  ErrorCodes,
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

export interface OpenOptions {
  clientName: string;
  /** Perform the `initialize` handshake; default `true`. Without it only `shutdown` is of use. */
  handshake?: boolean;
  /** How long the daemon may take to answer the handshake; default 10 s. */
  handshakeTimeoutMs?: number;
}

/** How a connection's byte stream is ended: gently first, then for good. */
interface Transport {
  end(): void;
  destroy(): void;
  /** Resolves once whatever is behind the transport (a child process) is gone. */
  gone?: Promise<void>;
}

/** How long `close` waits for the daemon to close its side before cutting the connection. */
const CLOSE_GRACE_MS = 1000;

/** Whether connecting failed because no daemon listens, or one that was stopping hung up on us. */
export function isNoDaemon(error: unknown): boolean {
  const code = (error as { code?: unknown })?.code;
  return code === 'ENOENT' || code === 'ECONNREFUSED' || code === 'ECONNRESET' || code === 'EPIPE' || code === 'CACHE_CONNECTION_LOST';
}

function lostError(): CacheError {
  return new CacheError('CACHE_CONNECTION_LOST', 'The connection to the hoard daemon closed; the next call reconnects.');
}

function closedError(): CacheError {
  return new CacheError('CACHE_CLOSED', 'The cache is closed.');
}

/** One JSON-RPC connection to a daemon, with the daemon's errors turned back into {@link CacheError}s. */
export class DaemonConnection {
  readonly #connection: MessageConnection;
  readonly #transport: Transport;
  #lost = false;
  #closedByUs = false;
  /** Requests sent and not yet answered. */
  #pending = 0;
  #info?: InitializeResult;
  /** Resolves once the connection has closed, for whatever reason. */
  readonly lostPromise: Promise<void>;

  private constructor(connection: MessageConnection, transport: Transport) {
    this.#connection = connection;
    this.#transport = transport;
    this.lostPromise = new Promise((resolve) => {
      connection.onClose(async () => {
        this.#lost = true;
        // Answers that arrived just before the close still wait in vscode-jsonrpc's queue, which hands out one
        // message per event-loop turn: let them through before dispose rejects whatever is left.
        const turns = this.#pending + 2;
        for (let turn = 0; turn < turns && this.#pending > 0; turn++) await new Promise((next) => setImmediate(next));
        connection.dispose();
        transport.destroy();
        resolve();
      });
    });
    connection.onError(() => transport.destroy());
    connection.listen();
  }

  /** Connects to the daemon on `socketPath`; rejects with the socket's error when nobody listens. */
  static async open(socketPath: string, options: OpenOptions): Promise<DaemonConnection> {
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
    const daemon = new DaemonConnection(connection, { end: () => socket.end(), destroy: () => socket.destroy() });
    return options.handshake === false ? daemon : DaemonConnection.#initialize(daemon, options, socketPath);
  }

  /** Speaks to a daemon over a pair of streams, such as a child's stdout and stdin. */
  static async overStreams(input: Readable, output: Writable, options: OpenOptions & { transport: Transport }): Promise<DaemonConnection> {
    const connection = createMessageConnection(quietReader(new StreamMessageReader(input)), new StreamMessageWriter(output));
    return DaemonConnection.#initialize(new DaemonConnection(connection, options.transport), options, 'stdio');
  }

  static async #initialize(daemon: DaemonConnection, options: OpenOptions, where: string): Promise<DaemonConnection> {
    const timeoutMs = options.handshakeTimeoutMs ?? 10_000;
    const timeout = AbortSignal.timeout(timeoutMs);
    try {
      daemon.#info = await daemon.request(
        Initialize,
        { clientName: options.clientName, pid: process.pid, protocolVersion: PROTOCOL_VERSION },
        { signal: timeout },
      );
    } catch (error) {
      daemon.#transport.destroy();
      await daemon.close();
      if (timeout.aborted) {
        throw new CacheError(
          'CACHE_CONNECTION_LOST',
          `The hoard daemon on ${where} accepted the connection but did not answer within ${timeoutMs} ms.`,
        );
      }
      throw error;
    }
    return daemon;
  }

  /** What the daemon said of itself in the handshake. */
  get info(): InitializeResult {
    return this.#info!;
  }

  /**
   * Refuses a value whose message would exceed the daemon's limit, which would otherwise close the connection.
   * The estimate is generous: JSON may escape each byte of an id or scope name (`names`) as six.
   * @throws CacheError `CACHE_VALUE_TOO_LARGE`.
   */
  checkValueSize(base64: string, names: readonly string[]): void {
    const overhead = 256 + 6 * names.reduce((total, name) => total + Buffer.byteLength(name), 0);
    const limit = this.info.capabilities.maxMessageBytes;
    if (base64.length + overhead > limit) {
      throw new CacheError(
        'CACHE_VALUE_TOO_LARGE',
        `This value takes ${base64.length} bytes as base64, and the daemon accepts messages of at most ${limit} bytes.`,
      );
    }
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
    this.#pending++;
    const mapped = sent
      .catch((error: unknown) => {
        throw this.#toCacheError(error, type.method);
      })
      .finally(() => this.#pending--);
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

  #toCacheError(error: unknown, method: string): unknown {
    if (!(error instanceof ResponseError)) return error;
    const code = (error.data as { code?: unknown } | undefined)?.code;
    if (typeof code === 'string' && code.startsWith('CACHE_')) return new CacheError(code as CacheErrorCode, error.message);
    if (this.#lost || error.code === ErrorCodes.PendingResponseRejected || error.code === ErrorCodes.MessageWriteError) {
      return this.#closedByUs ? closedError() : lostError();
    }
    if (error.code === ErrorCodes.MethodNotFound) {
      return new CacheError(
        'CACHE_PROTOCOL_MISMATCH',
        `The hoard daemon does not know ${method}: it is older than this client. Run \`hoard stop\` to replace it.`,
      );
    }
    return new CacheError('CACHE_INTERNAL', `The hoard daemon answered ${method} with error ${error.code}: ${error.message}`);
  }

  /** Closes the connection; pending calls reject with `CACHE_CLOSED`. Cuts the connection if the daemon does not close its side soon. */
  async close(): Promise<void> {
    if (!this.#lost) {
      this.#closedByUs = true;
      this.#transport.end();
      const cut = setTimeout(() => this.#transport.destroy(), CLOSE_GRACE_MS);
      cut.unref();
      await this.lostPromise;
      clearTimeout(cut);
    }
    await this.#transport.gone;
  }
}
