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
  StreamMessageReader,
  StreamMessageWriter,
} from 'vscode-jsonrpc/node';
import { CacheError } from '../src/errors.js';
import type { EncodedValue } from '../src/store.js';
import {
  Clear,
  Delete,
  Get,
  GetSet,
  HandleSet,
  type InitializeResult,
  Release,
  Set as SetRequest,
  Status,
  type StatusResult,
  type WireItem,
} from '../src/protocol.js';
import { quietReader } from '../src/quiet-reader.js';
import {
  type CallOptions,
  type ChannelItem,
  checkMessageSize,
  closedError,
  connectSocket,
  type DaemonChannel,
  endTransport,
  fromWireError,
  type GetAnswer,
  type GetSetAnswer,
  lostError,
  type Transport,
} from './daemon-channel.js';


function toBase64(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('base64');
}

function fromWire(item: WireItem | null): ChannelItem | null {
  return item && { modified: item.modified, encoding: item.encoding, bytes: Buffer.from(item.value, 'base64') };
}

/** One JSON-RPC connection to a daemon (the JSON transport), with the daemon's errors turned back into `CacheError`s. */
export class DaemonConnection implements DaemonChannel {
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

  /**
   * Serves the rest of a connection over `input` and `output` in JSON-RPC; `info` is the handshake's answer,
   * absent when there was none (only `shutdown` is of use then).
   */
  static over(input: Readable, output: Writable, transport: Transport, info?: InitializeResult): DaemonConnection {
    const connection = createMessageConnection(quietReader(new StreamMessageReader(input)), new StreamMessageWriter(output));
    const daemon = new DaemonConnection(connection, transport);
    daemon.#info = info;
    // The handshake left the stream paused, and a new listener does not undo an explicit pause.
    input.resume();
    return daemon;
  }

  /** Connects to `socketPath` without a handshake, for `shutdown`, which a daemon of any protocol version answers. */
  static async withoutHandshake(socketPath: string): Promise<DaemonConnection> {
    const socket = await connectSocket(socketPath);
    return DaemonConnection.over(socket, socket, { end: () => socket.end(), destroy: () => socket.destroy() });
  }

  /** What the daemon said of itself in the handshake. */
  get info(): InitializeResult {
    return this.#info!;
  }

  /** Whether the connection has closed. */
  get lost(): boolean {
    return this.#lost;
  }

  request<P, R>(type: RequestType<P, R, void>, params: P, options?: CallOptions<R>): Promise<R>;
  request<R>(type: RequestType0<R, void>): Promise<R>;
  request<P, R>(type: RequestType<P, R, void> | RequestType0<R, void>, params?: P, options: CallOptions<R> = {}): Promise<R> {
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

  /** Estimates a value's message generously: JSON may escape each byte of an id or scope name as six. */
  #checkSize(base64: string, names: readonly string[]): void {
    const overhead = 256 + 6 * names.reduce((total, name) => total + Buffer.byteLength(name), 0);
    checkMessageSize(this.info, base64.length + overhead, `${base64.length} bytes as base64`);
  }

  async get(scope: readonly string[], id: string, options: CallOptions<GetAnswer> = {}): Promise<GetAnswer> {
    const { abandoned } = options;
    const result = await this.request(
      Get,
      { scope: [...scope], id },
      { signal: options.signal, abandoned: abandoned && ((late) => abandoned({ handle: late.handle, item: null })) },
    );
    return { handle: result.handle, item: fromWire(result.item) };
  }

  async getset(scope: readonly string[], id: string, wait: boolean, options: CallOptions<GetSetAnswer> = {}): Promise<GetSetAnswer> {
    const { abandoned } = options;
    const result = await this.request(
      GetSet,
      { scope: [...scope], id, wait },
      { signal: options.signal, abandoned: abandoned && ((late) => abandoned({ handle: late.handle, item: null })) },
    );
    return { handle: result.handle, item: fromWire(result.item) };
  }

  async handleSet(handle: number, value: EncodedValue): Promise<void> {
    const base64 = toBase64(value.bytes);
    this.#checkSize(base64, []);
    await this.request(HandleSet, { handle, encoding: value.encoding, value: base64 });
  }

  release(handle: number): void {
    void this.notify(Release, { handle });
  }

  async set(scope: readonly string[], id: string, value: EncodedValue, modified?: number): Promise<void> {
    const base64 = toBase64(value.bytes);
    this.#checkSize(base64, [...scope, id]);
    await this.request(SetRequest, { scope: [...scope], id, encoding: value.encoding, value: base64, modified });
  }

  async delete(scope: readonly string[], id: string): Promise<void> {
    await this.request(Delete, { scope: [...scope], id });
  }

  async clear(scope: readonly string[]): Promise<void> {
    await this.request(Clear, { scope: [...scope] });
  }

  status(): Promise<StatusResult> {
    return this.request(Status);
  }

  #toCacheError(error: unknown, method: string): unknown {
    if (!(error instanceof ResponseError)) return error;
    const code = (error.data as { code?: unknown } | undefined)?.code;
    if (typeof code === 'string' && code.startsWith('CACHE_')) return fromWireError(code, error.message);
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
      await endTransport(this.#transport, this.lostPromise);
    }
    await this.#transport.gone;
  }
}
