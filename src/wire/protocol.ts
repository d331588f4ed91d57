/**
 * The wire between the daemon and its clients (see PROTOCOL.md): every method declared once, with its name,
 * params, result, error codes and both layouts (JSON-RPC with base64 values, and binary frames). The daemon and
 * the client encode and decode through these declarations; nothing here touches a socket.
 */
import { NotificationType, RequestType } from 'vscode-jsonrpc';
import type { EncodedRecord, EncodedValue } from '../store.js';
import type { FrameCursor } from './frame-decoder.js';
import type { FrameEncoder } from './frame-encoder.js';
import { invalidParams, WireError, type WireErrorCode, type WireErrorData } from './wire-error.js';

/** Bumped on any change that an older peer would misread. */
export const PROTOCOL_VERSION = 1;

/** One JSON-RPC message with LSP framing, for the handshake that both sides write by hand. */
export function lspFrame(message: unknown): Buffer {
  const body = Buffer.from(JSON.stringify(message), 'utf8');
  return Buffer.concat([Buffer.from(`Content-Length: ${body.length}\r\n\r\n`, 'ascii'), body]);
}

/** How one message part (params or result) is written and read in each transport. */
export interface Layout<T> {
  writeBinary(encoder: FrameEncoder, value: T): void;
  /** @throws MalformedFrame, or WireError `CACHE_INVALID_PARAMS` / `CACHE_INVALID_VALUE` for fields out of range. */
  readBinary(frame: FrameCursor): T;
  toJson(value: T): unknown;
  /** Checks what the peer sent. @throws WireError `CACHE_INVALID_PARAMS` / `CACHE_INVALID_VALUE`. */
  fromJson(json: unknown): T;
}

/** A request: one answer (a result or an error) per call. */
export interface RequestMethod<P, R> {
  readonly kind: 'request';
  readonly method: string;
  /** The op of its binary frames. */
  readonly op: number;
  readonly params: Layout<P>;
  readonly result: Layout<R>;
  /**
   * The codes the daemon answers it with, besides {@link ANY_REQUEST_ERRORS}; PROTOCOL.md lists the same (a test
   * compares them).
   */
  readonly errors: readonly WireErrorCode[];
  /** The value the params carry, for the client's size check before sending. */
  readonly value?: (params: P) => EncodedValue;
  readonly type: RequestType<unknown, unknown, WireErrorData>;
}

/** A notification: no answer, and the daemon handles it before any later message on the connection. */
export interface NotificationMethod<P> {
  readonly kind: 'notification';
  readonly method: string;
  readonly op: number;
  readonly params: Layout<P>;
  readonly type: NotificationType<unknown>;
}

/** Ops of the binary frames that are not methods: answers, and the cancel of a request by its id. */
export const FrameOp = Object.freeze({ Cancel: 0x0a, Result: 0x80, Error: 0x81 });

/** Bytes before a frame's fields: the length, the op and the request id. */
export const FRAME_HEADER_BYTES = 9;

// --- the fields every method is built from -------------------------------------------------------------------

function object(json: unknown): Record<string, unknown> {
  if (typeof json !== 'object' || json === null || Array.isArray(json)) throw invalidParams('params must be an object');
  return json as Record<string, unknown>;
}

function string(json: Record<string, unknown>, name: string): string {
  const value = json[name];
  if (typeof value !== 'string') throw invalidParams(`${name} must be a string`);
  return value;
}

/** A scope path: an array of non-empty strings. */
function scope(value: unknown): string[] {
  if (!Array.isArray(value)) throw invalidParams('scope must be an array of non-empty strings');
  for (const name of value) {
    if (typeof name !== 'string' || name === '') throw invalidParams('scope must be an array of non-empty strings');
  }
  return value as string[];
}

function handle(value: unknown): number {
  if (!Number.isSafeInteger(value) || (value as number) < 0) throw invalidParams('handle must be a non-negative integer');
  return value as number;
}

const ENCODING_NAME = /^[\x21-\x7e]{1,64}$/;

/** An encoding name: 1 to 64 printable ASCII characters. */
function encoding(value: string): string {
  if (!ENCODING_NAME.test(value)) throw invalidParams('encoding must be 1 to 64 printable ASCII characters');
  return value;
}

/** Base64 with padding; a flat character class, since grouped repetition overflows the regex stack on large values. */
const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;

function base64(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('base64');
}

/** A value's JSON fields, `encoding` and `value` (base64), read from `json`. */
function valueFromJson(json: Record<string, unknown>): EncodedValue {
  const name = encoding(string(json, 'encoding'));
  const text = string(json, 'value');
  if (text.length % 4 !== 0 || !BASE64.test(text)) throw new WireError('CACHE_INVALID_VALUE', 'value must be base64 (RFC 4648, with padding)');
  return { encoding: name, bytes: Buffer.from(text, 'base64') };
}

function readValue(frame: FrameCursor): EncodedValue {
  const name = encoding(frame.string());
  return { encoding: name, bytes: frame.keptBytes() };
}

/** Values at least this large share their JSON form among the answers that carry them at once. */
const SHARED_JSON_BYTES = 64 * 1024;

interface ItemJson {
  readonly modified: number;
  readonly encoding: string;
  readonly value: string;
}

/**
 * The JSON form of large items still in use, by their bytes: readers of one value granted together (whose bytes the
 * store shares) then share one base64 string too, instead of one each of a third more than the value.
 */
const jsonInUse = new WeakMap<Uint8Array, WeakRef<ItemJson>>();
/** The shared JSON forms of large items, whose `value` a writer may send from bytes of its own (it is base64: ASCII). */
const sharedItemJson = new WeakSet<object>();

/** Whether `holder` is the shared JSON form of a large item, so that its `value` string is worth sharing as bytes too. */
export function isSharedItemJson(holder: object): boolean {
  return sharedItemJson.has(holder);
}

function itemJson(record: EncodedRecord): ItemJson {
  const { modified, value } = record;
  if (value.bytes.byteLength < SHARED_JSON_BYTES) return { modified, encoding: value.encoding, value: base64(value.bytes) };
  const kept = jsonInUse.get(value.bytes)?.deref();
  if (kept && kept.modified === modified && kept.encoding === value.encoding) return kept;
  const json = Object.freeze({ modified, encoding: value.encoding, value: base64(value.bytes) });
  jsonInUse.set(value.bytes, new WeakRef(json));
  sharedItemJson.add(json);
  return json;
}

/** An item: in binary a u8 presence flag, then f64 `modified`, the encoding and the bytes; in JSON an object or `null`. */
const item = {
  write(encoder: FrameEncoder, record: EncodedRecord | null): void {
    if (!record) {
      encoder.u8(0);
      return;
    }
    encoder.u8(1).f64(record.modified).string(record.value.encoding).bytes(record.value.bytes);
  },
  read(frame: FrameCursor): EncodedRecord | null {
    if (frame.u8() === 0) return null;
    const modified = frame.f64();
    const encoding = frame.string();
    return { modified, value: { encoding, bytes: frame.keptBytes() } };
  },
  toJson(record: EncodedRecord | null): unknown {
    return record && itemJson(record);
  },
  fromJson(json: unknown): EncodedRecord | null {
    if (json === null) return null;
    const fields = object(json);
    return { modified: Number(fields.modified), value: { encoding: String(fields.encoding), bytes: Buffer.from(String(fields.value), 'base64') } };
  },
};

/** Params or a result with nothing in them: no fields in binary; absent or `{}` params and a `null` result in JSON. */
const none: Layout<void> = {
  writeBinary() {},
  readBinary() {},
  toJson: () => null,
  fromJson() {},
};

function request<P, R>(declaration: Omit<RequestMethod<P, R>, 'kind' | 'type'>): RequestMethod<P, R> {
  return Object.freeze({ ...declaration, kind: 'request', type: new RequestType<unknown, unknown, WireErrorData>(declaration.method) });
}

// --- the methods -----------------------------------------------------------------------------------------------

export interface ItemParams {
  scope: readonly string[];
  id: string;
}

export interface ScopeParams {
  scope: readonly string[];
}

export interface GetSetParams extends ItemParams {
  /** `false`: answer at once with no handle when another holder has the lock. */
  wait: boolean;
}

export interface SetParams extends ItemParams {
  value: EncodedValue;
  /** Seconds since the epoch; the daemon's clock when absent. */
  modified?: number | undefined;
}

export interface HandleParams {
  handle: number;
}

export interface HandleSetParams extends HandleParams {
  value: EncodedValue;
}

export interface GetResult {
  /** Holds the item's read lock until released. */
  handle: number;
  item: EncodedRecord | null;
}

export interface GetSetResult {
  /** Holds the item's write lock until released; `null` when `wait` was false and the lock was taken. */
  handle: number | null;
  item: EncodedRecord | null;
}

const itemParams: Layout<ItemParams> = {
  writeBinary: (encoder, p) => void encoder.strings(p.scope).string(p.id),
  readBinary: (frame) => ({ scope: scope(frame.strings()), id: frame.string() }),
  toJson: (p) => ({ scope: p.scope, id: p.id }),
  fromJson(json) {
    const p = object(json);
    return { scope: scope(p.scope), id: string(p, 'id') };
  },
};

/** Codes any request may get: params of the wrong shape, a request before `initialize`, an unexpected failure. */
export const ANY_REQUEST_ERRORS: readonly WireErrorCode[] = ['CACHE_INVALID_PARAMS', 'CACHE_NOT_INITIALIZED', 'CACHE_INTERNAL'];

/** What a request that waits for a lock and then uses the store may get: cancelled, the daemon stopping, the disk. */
const STORE_ERRORS: readonly WireErrorCode[] = ['CACHE_CANCELLED', 'CACHE_CLOSED', 'CACHE_STORAGE', 'CACHE_DATA_DIRECTORY_LOST'];

export const Get = request<ItemParams, GetResult>({
  method: 'cache/get',
  op: 0x01,
  params: itemParams,
  result: {
    writeBinary(encoder, r) {
      encoder.u64(r.handle);
      item.write(encoder, r.item);
    },
    readBinary: (frame) => ({ handle: frame.u64(), item: item.read(frame) }),
    toJson: (r) => ({ handle: r.handle, item: item.toJson(r.item) }),
    fromJson(json) {
      const r = object(json);
      return { handle: Number(r.handle), item: item.fromJson(r.item) };
    },
  },
  errors: ['CACHE_CORRUPT', ...STORE_ERRORS],
});

export const GetSet = request<GetSetParams, GetSetResult>({
  method: 'cache/getset',
  op: 0x02,
  params: {
    writeBinary: (encoder, p) => void encoder.strings(p.scope).string(p.id).u8(p.wait ? 1 : 0),
    readBinary(frame) {
      const p = itemParams.readBinary(frame);
      const wait = frame.u8();
      if (wait > 1) throw invalidParams('wait must be 0 or 1');
      return { ...p, wait: wait === 1 };
    },
    toJson: (p) => ({ scope: p.scope, id: p.id, wait: p.wait }),
    fromJson(json) {
      const p = itemParams.fromJson(json);
      const wait = (json as Record<string, unknown>).wait;
      if (wait !== undefined && typeof wait !== 'boolean') throw invalidParams('wait must be a boolean');
      return { ...p, wait: wait !== false };
    },
  },
  result: {
    writeBinary(encoder, r) {
      if (r.handle === null) {
        encoder.u8(0);
        return;
      }
      encoder.u8(1).u64(r.handle);
      item.write(encoder, r.item);
    },
    readBinary(frame) {
      if (frame.u8() === 0) return { handle: null, item: null };
      return { handle: frame.u64(), item: item.read(frame) };
    },
    toJson: (r) => ({ handle: r.handle, item: item.toJson(r.item) }),
    fromJson(json) {
      const r = object(json);
      return { handle: r.handle === null ? null : Number(r.handle), item: item.fromJson(r.item) };
    },
  },
  // A record that cannot be read back is a miss here, so that the value is computed again.
  errors: STORE_ERRORS,
});

export const HandleSet = request<HandleSetParams, void>({
  method: 'cache/handleSet',
  op: 0x03,
  params: {
    writeBinary: (encoder, p) => void encoder.u64(p.handle).string(p.value.encoding).bytes(p.value.bytes),
    readBinary: (frame) => ({ handle: frame.u64(), value: readValue(frame) }),
    toJson: (p) => ({ handle: p.handle, encoding: p.value.encoding, value: base64(p.value.bytes) }),
    fromJson(json) {
      const p = object(json);
      return { handle: handle(p.handle), value: valueFromJson(p) };
    },
  },
  result: none,
  // It waits for no lock: the handle holds it.
  errors: ['CACHE_LOCK_NOT_HELD', 'CACHE_INVALID_VALUE', 'CACHE_CLOSED', 'CACHE_STORAGE', 'CACHE_DATA_DIRECTORY_LOST'],
  value: (p) => p.value,
});

const handleParams: Layout<HandleParams> = {
  writeBinary: (encoder, p) => void encoder.u64(p.handle),
  readBinary: (frame) => ({ handle: frame.u64() }),
  toJson: (p) => ({ handle: p.handle }),
  fromJson: (json) => ({ handle: handle(object(json).handle) }),
};

/** Releases a handle; an unknown one (released already, or another connection's) is ignored. Binary request id 0. */
export const Release: NotificationMethod<HandleParams> = Object.freeze({
  kind: 'notification',
  method: 'cache/release',
  op: 0x04,
  params: handleParams,
  type: new NotificationType<unknown>('cache/release'),
});

export const Set = request<SetParams, void>({
  method: 'cache/set',
  op: 0x05,
  params: {
    writeBinary: (encoder, p) =>
      void encoder
        .strings(p.scope)
        .string(p.id)
        .f64(p.modified ?? Date.now() / 1000)
        .string(p.value.encoding)
        .bytes(p.value.bytes),
    readBinary(frame) {
      const { scope: path, id } = itemParams.readBinary(frame);
      const modified = frame.f64();
      return { scope: path, id, modified, value: readValue(frame) };
    },
    toJson: (p) => ({ scope: p.scope, id: p.id, encoding: p.value.encoding, value: base64(p.value.bytes), modified: p.modified }),
    fromJson(json) {
      const { scope: path, id } = itemParams.fromJson(json);
      const p = json as Record<string, unknown>;
      const value = valueFromJson(p);
      if (p.modified !== undefined && typeof p.modified !== 'number') throw invalidParams('modified must be a finite number');
      return { scope: path, id, value, modified: p.modified };
    },
  },
  result: none,
  errors: ['CACHE_INVALID_VALUE', ...STORE_ERRORS],
  value: (p) => p.value,
});

export const Delete = request<ItemParams, void>({
  method: 'cache/delete',
  op: 0x06,
  params: itemParams,
  result: none,
  errors: STORE_ERRORS,
});

export const Clear = request<ScopeParams, void>({
  method: 'cache/clear',
  op: 0x07,
  params: {
    writeBinary: (encoder, p) => void encoder.strings(p.scope),
    readBinary: (frame) => ({ scope: scope(frame.strings()) }),
    toJson: (p) => ({ scope: p.scope }),
    fromJson: (json) => ({ scope: scope(object(json).scope) }),
  },
  result: none,
  errors: STORE_ERRORS,
});

export interface StatusResult {
  pid: number;
  version: string;
  protocolVersion: number;
  uptimeMs: number;
  socketPath: string | null;
  dataDir: string;
  sizeOnDiskBytes: number;
  connections: number;
  locksHeld: number;
  waiters: number;
  hits: number;
  misses: number;
  /** Bytes of recently used values kept in memory, and the budget they are kept within (`--memory-cache`). */
  memoryCacheBytes: number;
  memoryCacheLimitBytes: number;
  /** The daemon's resident memory. */
  rssBytes: number;
}

export const Status = request<void, StatusResult>({
  method: 'daemon/status',
  op: 0x08,
  params: none,
  result: {
    // In binary, the same JSON object as one string: status is rare and its fields grow.
    writeBinary: (encoder, r) => void encoder.string(JSON.stringify(r)),
    readBinary: (frame) => JSON.parse(frame.string()) as StatusResult,
    toJson: (r) => r,
    fromJson: (json) => object(json) as unknown as StatusResult,
  },
  errors: [],
});

/** Asks the daemon to stop once its answer is on its way; answered whatever the protocol version, without `initialize`. */
export const Shutdown = request<void, void>({ method: 'shutdown', op: 0x09, params: none, result: none, errors: [] });

/** A request of any params and result, for tables of methods. */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type AnyRequest = RequestMethod<any, any>;

/** Every request; each has its own binary op. */
export const REQUESTS: readonly AnyRequest[] = [Get, GetSet, HandleSet, Set, Delete, Clear, Status, Shutdown];

// --- the handshake, JSON only ----------------------------------------------------------------------------------

export interface InitializeParams {
  /** Names the client in the daemon's log. */
  clientName?: string;
  pid?: number;
  protocolVersion: number;
  /** Transports the client can switch to after this exchange, besides JSON; protocol 1 knows `'binary'`. */
  transports?: string[];
}

export interface InitializeResult {
  daemonVersion: string;
  protocolVersion: number;
  pid: number;
  capabilities: {
    /** How values travel in JSON messages: only `'base64'` in protocol 1. */
    valueTransfer: 'base64';
    /** The framing of every later message on this connection: `'binary'` when the client asked for it, else `'json'`. */
    transport: 'json' | 'binary';
    /** The largest message the daemon accepts, in bytes. */
    maxMessageBytes: number;
  };
}

/** The first message on every connection, always in JSON; its answer decides the transport of the rest. */
export const Initialize = Object.freeze({
  method: 'initialize',
  type: new RequestType<InitializeParams, InitializeResult, WireErrorData>('initialize'),
  errors: ['CACHE_PROTOCOL_MISMATCH'] as readonly WireErrorCode[],
  /** Checks the params a client sent; `clientName` and `pid` are optional. */
  fromJson(json: unknown): InitializeParams {
    const p = object(json);
    if (typeof p.protocolVersion !== 'number') throw invalidParams('protocolVersion must be a number');
    return {
      protocolVersion: p.protocolVersion,
      clientName: typeof p.clientName === 'string' ? p.clientName : undefined,
      pid: typeof p.pid === 'number' ? p.pid : undefined,
      transports: Array.isArray(p.transports) ? p.transports.filter((t): t is string => typeof t === 'string') : [],
    };
  },
});

/** Ends the connection at once (JSON only; LSP's `exit`). */
export const Exit = Object.freeze({ method: 'exit', type: new NotificationType<unknown>('exit') });
