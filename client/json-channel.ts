import type { Readable, Writable } from 'node:stream';
import { ErrorCodes, type Message, StreamMessageReader, StreamMessageWriter } from 'vscode-jsonrpc/node';
import { CacheError } from '../src/errors.js';
import { quietReader } from '../src/wire/quiet-reader.js';
import type { AnyRequest, InitializeResult, NotificationMethod } from '../src/wire/protocol.js';
import { fromWireError } from '../src/wire/wire-error.js';
import type { EncodedValue } from '../src/store.js';
import { Channel, namesOf, type Transport } from './channel.js';

interface Response {
  id: number | string | null;
  result?: unknown;
  error?: { code: number; message: string; data?: { code?: unknown } };
}

/** The error an error response stands for: the daemon's coded error, or what JSON-RPC's own codes mean here. */
function toCacheError(error: NonNullable<Response['error']>, method: string): Error {
  const code = error.data?.code;
  if (typeof code === 'string' && code.startsWith('CACHE_')) return fromWireError(code, error.message);
  if (error.code === ErrorCodes.MethodNotFound) {
    return new CacheError(
      'CACHE_PROTOCOL_MISMATCH',
      `The hoard daemon does not know ${method}: it is older than this client. Run \`hoard stop\` to replace it.`,
    );
  }
  return new CacheError('CACHE_INTERNAL', `The hoard daemon answered ${method} with error ${error.code}: ${error.message}`);
}

/**
 * A connection to the daemon in JSON-RPC with LSP framing (the JSON transport, which any language can speak):
 * vscode-jsonrpc's reader and writer for the framing, the shared call bookkeeping for the rest.
 */
export class JsonChannel extends Channel {
  readonly #writer: StreamMessageWriter;

  /** `info` is the handshake's answer; without one (`hoard stop` skips it), only `shutdown` is of use. */
  constructor(input: Readable, output: Writable, transport: Transport, info?: InitializeResult) {
    super(transport, info ?? { daemonVersion: 'unknown', protocolVersion: 0, pid: 0, capabilities: { valueTransfer: 'base64', transport: 'json', maxMessageBytes: Number.MAX_SAFE_INTEGER } });
    this.#writer = new StreamMessageWriter(output);
    this.#writer.onError(() => transport.destroy());
    const reader = quietReader(new StreamMessageReader(input));
    reader.onError(() => transport.destroy());
    reader.onClose(() => this.closed());
    reader.listen((message: Message) => this.#receive(message as unknown as Response));
    // The handshake left the stream paused, and a new listener does not undo an explicit pause.
    input.resume();
  }

  #receive(message: Response): void {
    if (typeof message.id !== 'number') return;
    const id = message.id;
    const { error } = message;
    if (error) this.failed(id, (method) => toCacheError(error, method.method));
    else this.answered(id, (method) => method.result.fromJson(message.result));
  }

  #write(message: object): void {
    this.#writer.write(message as Message).catch(() => this.transport.destroy());
  }

  protected send(id: number, method: AnyRequest, params: unknown): void {
    this.#write({ jsonrpc: '2.0', id, method: method.method, params: method.params.toJson(params) ?? undefined });
  }

  protected sendNotification(method: NotificationMethod<unknown>, params: unknown): void {
    this.#write({ jsonrpc: '2.0', method: method.method, params: method.params.toJson(params) });
  }

  protected sendCancel(id: number): void {
    this.#write({ jsonrpc: '2.0', method: '$/cancelRequest', params: { id } });
  }

  /** A generous estimate: the value as base64, and JSON may escape each byte of a name as six (`\u0000`). */
  protected messageBytes(value: EncodedValue, params: unknown): number {
    const names = namesOf(params).reduce((total, name) => total + Buffer.byteLength(name), Buffer.byteLength(value.encoding));
    return Math.ceil(value.bytes.byteLength / 3) * 4 + 320 + 6 * names;
  }
}
