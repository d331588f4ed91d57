/**
 * The wire between the daemon and its clients (see PROTOCOL.md): every method declared once, with its name,
 * params, result, error codes and both layouts (JSON-RPC with base64 values, and binary frames). The daemon and
 * the client encode and decode through these declarations; nothing here touches a socket.
 */
import type { TierStatus } from '../shared-tier.js';
import { NotificationType, RequestType } from 'vscode-jsonrpc';
import type { ListPage, ListedItem } from '../cache.js';
import type { LockMode } from '../lock-table.js';
import type { EncodedRecord, EncodedValue, ScopeUsage, VerifyReport } from '../store.js';
import type { FrameCursor } from './frame-decoder.js';
import type { FrameEncoder } from './frame-encoder.js';
import { invalidParams, WireError, type WireErrorCode, type WireErrorData } from './wire-error.js';

/** Bumped on any change that an older peer would misread. */
export const PROTOCOL_VERSION = 2;

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

function optionalString(json: Record<string, unknown>, name: string): string | undefined {
  const value = json[name];
  if (value === undefined || value === null) return undefined;
  if (typeof value !== 'string') throw invalidParams(`${name} must be a string`);
  return value;
}

function optionalBoolean(json: Record<string, unknown>, name: string): boolean | undefined {
  const value = json[name];
  if (value === undefined || value === null) return undefined;
  if (typeof value !== 'boolean') throw invalidParams(`${name} must be a boolean`);
  return value;
}

/** A u8 that must be 0 or 1. */
function flag(frame: FrameCursor, name: string): boolean {
  const value = frame.u8();
  if (value > 1) throw invalidParams(`${name} must be 0 or 1`);
  return value === 1;
}

/** How long a written value is fresh, as `cache/set` and `cache/handleSet` carry it. */
export interface WireExpiry {
  /** After this many milliseconds the item reads as a miss; absent: never. */
  ttlMs?: number | undefined;
  /** How long after that the expired item is kept for a `getset`'s `stale`; absent: 0. Only with `ttlMs`. */
  staleMs?: number | undefined;
}

/** Checks an expiry: `ttlMs` finite and above 0, `staleMs` finite, at least 0 and only with `ttlMs`. */
function expiry(ttlMs: unknown, staleMs: unknown): WireExpiry {
  const ttl = ttlMs ?? undefined;
  const stale = staleMs ?? undefined;
  if (ttl !== undefined && !(typeof ttl === 'number' && Number.isFinite(ttl) && ttl > 0)) {
    throw invalidParams('ttlMs must be a finite number of milliseconds above 0');
  }
  if (stale !== undefined && !(typeof stale === 'number' && Number.isFinite(stale) && stale >= 0)) {
    throw invalidParams('staleMs must be a finite number of milliseconds, at least 0');
  }
  if (stale !== undefined && ttl === undefined) throw invalidParams('staleMs needs ttlMs');
  return { ttlMs: ttl as number | undefined, staleMs: stale as number | undefined };
}

/** In binary, an expiry is two f64s, `ttlMs` and `staleMs`, with 0 for absent. */
function writeExpiry(encoder: FrameEncoder, p: WireExpiry): void {
  encoder.f64(p.ttlMs ?? 0).f64(p.staleMs ?? 0);
}

function readExpiry(frame: FrameCursor): WireExpiry {
  const ttlMs = frame.f64();
  const staleMs = frame.f64();
  return expiry(ttlMs === 0 ? undefined : ttlMs, staleMs === 0 ? undefined : staleMs);
}

/** The JSON fields of an expiry that are set. */
function expiryJson(p: WireExpiry): Record<string, number> {
  const json: Record<string, number> = {};
  if (p.ttlMs !== undefined) json.ttlMs = p.ttlMs;
  if (p.staleMs !== undefined) json.staleMs = p.staleMs;
  return json;
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
  /** Seconds since the epoch, or `null` for an item that never expires. */
  readonly expires: number | null;
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

/** An item's expiry in seconds, as the wire carries it: `expiresAtMs / 1000` (which comes back exactly through `* 1000`). */
function expiresOf(record: EncodedRecord): number | null {
  return record.expiresAtMs === undefined ? null : record.expiresAtMs / 1000;
}

function itemJson(record: EncodedRecord): ItemJson {
  const { modified, value } = record;
  const expires = expiresOf(record);
  if (value.bytes.byteLength < SHARED_JSON_BYTES) return { modified, expires, encoding: value.encoding, value: base64(value.bytes) };
  const kept = jsonInUse.get(value.bytes)?.deref();
  if (kept && kept.modified === modified && kept.expires === expires && kept.encoding === value.encoding) return kept;
  const json = Object.freeze({ modified, expires, encoding: value.encoding, value: base64(value.bytes) });
  jsonInUse.set(value.bytes, new WeakRef(json));
  sharedItemJson.add(json);
  return json;
}

/**
 * An item answered by reference (to a client that enabled references, for a value kept in a file): the client reads
 * `size` bytes from `file` (relative to the `blobDirectory` the handshake gave) itself, while it holds the handle.
 */
export interface FileItem {
  readonly kind: 'file';
  readonly modified: number;
  readonly expiresAtMs?: number;
  readonly encoding: string;
  /** The file's name under `blobDirectory`: two hex digits, `/`, then letters and digits (see {@link FILE_ITEM_NAME}). */
  readonly file: string;
  readonly size: number;
}

/** What names a value file may have: anything else in an answer is refused before it is joined to a path. */
export const FILE_ITEM_NAME = /^[0-9a-f]{2}\/[0-9a-z]{1,64}-[0-9a-z]{1,16}$/;

/**
 * An item answered in chunks (to a client that offered `chunks` and reads no files, for a value over the handshake's
 * `inlineMaxBytes`): its `size` bytes come through `cache/readChunk` on the answer's handle, while it is held.
 */
export interface ChunkedItem {
  readonly kind: 'chunked';
  readonly modified: number;
  readonly expiresAtMs?: number;
  readonly encoding: string;
  readonly size: number;
}

/** An item as an answer carries it: with its bytes, (references enabled) by reference, or (chunks offered) in chunks. */
export type WireItem = EncodedRecord | FileItem | ChunkedItem;

export function isFileItem(item: WireItem): item is FileItem {
  return (item as FileItem).kind === 'file';
}

export function isChunkedItem(item: WireItem): item is ChunkedItem {
  return (item as ChunkedItem).kind === 'chunked';
}

function fileItemJson(item: FileItem): unknown {
  const expires = item.expiresAtMs === undefined ? null : item.expiresAtMs / 1000;
  return { modified: item.modified, expires, encoding: item.encoding, size: item.size, file: item.file };
}

/**
 * An item: in binary a u8 (0 none, 1 an item, 2 an item that expires, 3 a file item, 4 a file item that expires, 5 a
 * chunked item, 6 a chunked item that expires), then f64 `modified`, for 2, 4 and 6 f64 `expires` (seconds), the
 * encoding, then for 1 and 2 the bytes, for 3 and 4 `u64` size and `string` file, for 5 and 6 `u64` size; in JSON an
 * object with `expires` (seconds or `null`) and `value` (base64), or `size` and `file` instead of `value`, or `size`
 * and `chunked: true`; or `null`. Its `expiresAtMs` travels as seconds; `staleUntilMs` stays in the daemon.
 */
const item = {
  write(encoder: FrameEncoder, record: WireItem | null): void {
    if (!record) {
      encoder.u8(0);
      return;
    }
    if (isChunkedItem(record)) {
      if (record.expiresAtMs === undefined) encoder.u8(5).f64(record.modified);
      else encoder.u8(6).f64(record.modified).f64(record.expiresAtMs / 1000);
      encoder.string(record.encoding).u64(record.size);
      return;
    }
    if (isFileItem(record)) {
      if (record.expiresAtMs === undefined) encoder.u8(3).f64(record.modified);
      else encoder.u8(4).f64(record.modified).f64(record.expiresAtMs / 1000);
      encoder.string(record.encoding).u64(record.size).string(record.file);
      return;
    }
    if (record.expiresAtMs === undefined) encoder.u8(1).f64(record.modified);
    else encoder.u8(2).f64(record.modified).f64(record.expiresAtMs / 1000);
    encoder.string(record.value.encoding).bytes(record.value.bytes);
  },
  read(frame: FrameCursor): WireItem | null {
    const kind = frame.u8();
    if (kind === 0) return null;
    const modified = frame.f64();
    const expires = kind === 2 || kind === 4 || kind === 6 ? frame.f64() : undefined;
    const encoding = frame.string();
    if (kind >= 5) {
      const size = frame.u64();
      return expires === undefined ? { kind: 'chunked', modified, encoding, size } : { kind: 'chunked', modified, encoding, size, expiresAtMs: expires * 1000 };
    }
    if (kind >= 3) {
      const size = frame.u64();
      const file = frame.string();
      return expires === undefined ? { kind: 'file', modified, encoding, size, file } : { kind: 'file', modified, encoding, size, file, expiresAtMs: expires * 1000 };
    }
    const value = { encoding, bytes: frame.keptBytes() };
    return expires === undefined ? { modified, value } : { modified, value, expiresAtMs: expires * 1000 };
  },
  toJson(record: WireItem | null): unknown {
    if (!record) return null;
    if (isChunkedItem(record)) {
      const expires = record.expiresAtMs === undefined ? null : record.expiresAtMs / 1000;
      return { modified: record.modified, expires, encoding: record.encoding, size: record.size, chunked: true };
    }
    return isFileItem(record) ? fileItemJson(record) : itemJson(record);
  },
  fromJson(json: unknown): WireItem | null {
    if (json === null || json === undefined) return null;
    const fields = object(json);
    const modified = Number(fields.modified);
    const expiresAtMs = typeof fields.expires === 'number' ? fields.expires * 1000 : undefined;
    if (fields.chunked === true) {
      const chunked = { kind: 'chunked' as const, modified, encoding: String(fields.encoding), size: Number(fields.size) };
      return expiresAtMs === undefined ? chunked : { ...chunked, expiresAtMs };
    }
    if (typeof fields.file === 'string') {
      const file = { kind: 'file' as const, modified, encoding: String(fields.encoding), size: Number(fields.size), file: fields.file };
      return expiresAtMs === undefined ? file : { ...file, expiresAtMs };
    }
    const value = { encoding: String(fields.encoding), bytes: Buffer.from(String(fields.value), 'base64') };
    return expiresAtMs === undefined ? { modified, value } : { modified, value, expiresAtMs };
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

export interface GetParams extends ItemParams {
  /** `false`: answer at once with no handle when another holder has the lock. */
  wait: boolean;
}

export type GetSetParams = GetParams;

export interface SetParams extends ItemParams, WireExpiry {
  value: EncodedValue;
  /** Seconds since the epoch; the daemon's clock when absent. */
  modified?: number | undefined;
}

export interface HandleParams {
  handle: number;
}

export interface HandleSetParams extends HandleParams, WireExpiry {
  value: EncodedValue;
}

export interface GetResult {
  /** Holds the item's read lock until released; `null` when `wait` was false and the lock was taken. */
  handle: number | null;
  item: WireItem | null;
}

export interface GetSetResult {
  /** Holds the item's write lock until released; `null` when `wait` was false and the lock was taken. */
  handle: number | null;
  item: WireItem | null;
  /** The expired item while it is kept (its `staleMs`), when `item` is `null` because it expired; else `null`. */
  stale: WireItem | null;
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

/** An item's address and whether to wait for its lock: in binary `strings` scope, `string` id, `u8` wait. */
const getParams: Layout<GetParams> = {
  writeBinary: (encoder, p) => void encoder.strings(p.scope).string(p.id).u8(p.wait ? 1 : 0),
  readBinary(frame) {
    // Field by field, not a spread of itemParams' object: this is every read's path.
    const path = scope(frame.strings());
    const id = frame.string();
    return { scope: path, id, wait: flag(frame, 'wait') };
  },
  toJson: (p) => ({ scope: p.scope, id: p.id, wait: p.wait }),
  fromJson(json) {
    const p = itemParams.fromJson(json);
    return { ...p, wait: optionalBoolean(json as Record<string, unknown>, 'wait') !== false };
  },
};

export const Get = request<GetParams, GetResult>({
  method: 'cache/get',
  op: 0x01,
  params: getParams,
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
  errors: ['CACHE_CORRUPT', 'CACHE_VALUE_TOO_LARGE', ...STORE_ERRORS],
});

export const GetSet = request<GetSetParams, GetSetResult>({
  method: 'cache/getset',
  op: 0x02,
  params: getParams,
  result: {
    writeBinary(encoder, r) {
      if (r.handle === null) {
        encoder.u8(0);
        return;
      }
      encoder.u8(1).u64(r.handle);
      item.write(encoder, r.item);
      item.write(encoder, r.stale);
    },
    readBinary(frame) {
      if (frame.u8() === 0) return { handle: null, item: null, stale: null };
      return { handle: frame.u64(), item: item.read(frame), stale: item.read(frame) };
    },
    toJson: (r) => ({ handle: r.handle, item: item.toJson(r.item), stale: item.toJson(r.stale) }),
    fromJson(json) {
      const r = object(json);
      return { handle: r.handle === null ? null : Number(r.handle), item: item.fromJson(r.item), stale: item.fromJson(r.stale) };
    },
  },
  // A record that cannot be read back is a miss here, so that the value is computed again.
  errors: ['CACHE_VALUE_TOO_LARGE', ...STORE_ERRORS],
});

export const HandleSet = request<HandleSetParams, void>({
  method: 'cache/handleSet',
  op: 0x03,
  params: {
    writeBinary(encoder, p) {
      encoder.u64(p.handle);
      writeExpiry(encoder, p);
      encoder.string(p.value.encoding).bytes(p.value.bytes);
    },
    readBinary(frame) {
      const number = frame.u64();
      const { ttlMs, staleMs } = readExpiry(frame);
      return { handle: number, value: readValue(frame), ttlMs, staleMs };
    },
    toJson: (p) => ({ handle: p.handle, encoding: p.value.encoding, value: base64(p.value.bytes), ...expiryJson(p) }),
    fromJson(json) {
      const p = object(json);
      const { ttlMs, staleMs } = expiry(p.ttlMs, p.staleMs);
      return { handle: handle(p.handle), value: valueFromJson(p), ttlMs, staleMs };
    },
  },
  result: none,
  // It waits for no lock: the handle holds it. In a shared scope, the tier may refuse it (a lost lease, a strict tier down).
  errors: [
    'CACHE_LOCK_NOT_HELD',
    'CACHE_INVALID_VALUE',
    'CACHE_OVER_SIZE_LIMIT',
    'CACHE_LEASE_LOST',
    'CACHE_TIER_UNAVAILABLE',
    'CACHE_CLOSED',
    'CACHE_STORAGE',
    'CACHE_DATA_DIRECTORY_LOST',
  ],
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
    writeBinary(encoder, p) {
      encoder
        .strings(p.scope)
        .string(p.id)
        .f64(p.modified ?? Date.now() / 1000);
      writeExpiry(encoder, p);
      encoder.string(p.value.encoding).bytes(p.value.bytes);
    },
    readBinary(frame) {
      const { scope: path, id } = itemParams.readBinary(frame);
      const modified = frame.f64();
      const { ttlMs, staleMs } = readExpiry(frame);
      return { scope: path, id, modified, value: readValue(frame), ttlMs, staleMs };
    },
    toJson: (p) => ({ scope: p.scope, id: p.id, encoding: p.value.encoding, value: base64(p.value.bytes), modified: p.modified, ...expiryJson(p) }),
    fromJson(json) {
      const { scope: path, id } = itemParams.fromJson(json);
      const p = json as Record<string, unknown>;
      const value = valueFromJson(p);
      if (p.modified !== undefined && typeof p.modified !== 'number') throw invalidParams('modified must be a finite number');
      const { ttlMs, staleMs } = expiry(p.ttlMs, p.staleMs);
      return { scope: path, id, value, modified: p.modified, ttlMs, staleMs };
    },
  },
  result: none,
  errors: ['CACHE_INVALID_VALUE', 'CACHE_OVER_SIZE_LIMIT', 'CACHE_TIER_UNAVAILABLE', ...STORE_ERRORS],
  value: (p) => p.value,
});

export const Delete = request<ItemParams, void>({
  method: 'cache/delete',
  op: 0x06,
  params: itemParams,
  result: none,
  errors: ['CACHE_TIER_UNAVAILABLE', ...STORE_ERRORS],
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
  errors: ['CACHE_TIER_UNAVAILABLE', ...STORE_ERRORS],
});

/** The largest page `cache/list` gives, and the default. */
export const MAX_LIST_LIMIT = 10_000;
export const DEFAULT_LIST_LIMIT = 1000;

export interface ListParams {
  scope: readonly string[];
  /** The previous page's `cursor`; absent: from the start. */
  cursor?: string | undefined;
  /** The most entries (items and scopes together) in the page, 1 to {@link MAX_LIST_LIMIT}; absent: 1,000. */
  limit?: number | undefined;
}

function listLimit(value: unknown): number | undefined {
  if (value === undefined || value === null) return undefined;
  if (!Number.isSafeInteger(value) || (value as number) < 1 || (value as number) > MAX_LIST_LIMIT) {
    throw invalidParams(`limit must be a whole number from 1 to ${MAX_LIST_LIMIT}`);
  }
  return value as number;
}

/** In binary: `u8` flags, 1 `expires` follows, 2 `accessed` follows. */
const EXPIRES = 1;
const ACCESSED = 2;

/**
 * One page of a scope's item ids and nested scope names, in key order; takes no lock. In binary the params are
 * `strings` scope, `string` cursor (empty: from the start), `u32` limit (0: the default).
 */
export const List = request<ListParams, ListPage>({
  method: 'cache/list',
  op: 0x0b,
  params: {
    writeBinary: (encoder, p) => void encoder.strings(p.scope).string(p.cursor ?? '').u32(p.limit ?? 0),
    readBinary(frame) {
      const path = scope(frame.strings());
      const cursor = frame.string();
      const limit = frame.u32();
      return { scope: path, cursor: cursor === '' ? undefined : cursor, limit: listLimit(limit === 0 ? undefined : limit) };
    },
    toJson: (p) => ({ scope: p.scope, ...(p.cursor === undefined ? {} : { cursor: p.cursor }), ...(p.limit === undefined ? {} : { limit: p.limit }) }),
    fromJson(json) {
      const p = object(json);
      return { scope: scope(p.scope), cursor: optionalString(p, 'cursor'), limit: listLimit(p.limit) };
    },
  },
  result: {
    writeBinary(encoder, r) {
      encoder.u32(r.items.length);
      for (const entry of r.items) {
        const flags = (entry.expires === null ? 0 : EXPIRES) | (entry.accessed === null ? 0 : ACCESSED);
        encoder.string(entry.id).f64(entry.sizeBytes).f64(entry.modified).u8(flags);
        if (entry.expires !== null) encoder.f64(entry.expires);
        if (entry.accessed !== null) encoder.f64(entry.accessed);
      }
      encoder.strings(r.scopes);
      if (r.cursor === null) encoder.u8(0);
      else encoder.u8(1).string(r.cursor);
    },
    readBinary(frame) {
      const count = frame.u32();
      const items: ListedItem[] = [];
      for (let n = 0; n < count; n++) {
        const id = frame.string();
        const sizeBytes = frame.f64();
        const modified = frame.f64();
        const flags = frame.u8();
        const expires = flags & EXPIRES ? frame.f64() : null;
        const accessed = flags & ACCESSED ? frame.f64() : null;
        items.push({ id, sizeBytes, modified, expires, accessed });
      }
      const scopes = frame.strings();
      const cursor = frame.u8() === 1 ? frame.string() : null;
      return { items, scopes, cursor };
    },
    toJson: (r) => r,
    fromJson: (json) => object(json) as unknown as ListPage,
  },
  errors: ['CACHE_CLOSED', 'CACHE_STORAGE', 'CACHE_DATA_DIRECTORY_LOST'],
});

export interface StatusParams {
  /** A scope to count from the data, for {@link StatusResult.scope}. */
  scope?: readonly string[] | undefined;
}

/** The figures of one top-level scope since the daemon started (sizes and items: now). */
export interface ScopeStatus {
  /** The top-level scope's name; `''` for items directly in the root scope. */
  name: string;
  sizeBytes: number;
  items: number;
  hits: number;
  misses: number;
  evictions: number;
  expirations: number;
}

/** The most top-level scopes `daemon/status` lists one by one: the largest by size; the rest are summed. */
export const STATUS_MAX_SCOPES = 1000;

export interface StatusResult {
  pid: number;
  version: string;
  protocolVersion: number;
  uptimeMs: number;
  socketPath: string | null;
  dataDir: string;
  sizeOnDiskBytes: number;
  /** The bytes the items take as the size limit counts them, and the limit (`null`: none). */
  sizeBytes: number;
  limitBytes: number | null;
  items: number;
  /** Bytes of replaced or removed values whose files wait for a handle on them to be released (eviction counts them). */
  pinnedBytes: number;
  /** Bytes in the files of open reservations, chunks being written included (the size limit counts them too). */
  reservedBytes: number;
  /** Values answered by reference (a file for the client to read) since the daemon started. */
  referenceReads: number;
  /** Values answered as chunked items (read with `cache/readChunk`) since the daemon started. */
  chunkedReads: number;
  connections: number;
  locksHeld: number;
  waiters: number;
  hits: number;
  misses: number;
  /** Items removed to keep within the limit, and their bytes, since the daemon started. */
  evictions: number;
  evictedBytes: number;
  /** Expired items removed since the daemon started. */
  expirations: number;
  /** Background eviction or expiry passes that failed since the daemon started (each logged, at most once a minute). */
  housekeepingFailures: number;
  /** The largest top-level scopes by size (at most {@link STATUS_MAX_SCOPES}), by name. */
  scopes: ScopeStatus[];
  /** The top-level scopes left out of {@link StatusResult.scopes}: how many, and their bytes and items together. */
  otherScopes: { count: number; sizeBytes: number; items: number };
  /** With the `scope` param: that scope's subtree, counted from the data. */
  scope?: { path: string[]; sizeBytes: number; items: number };
  /** Bytes of recently used values kept in memory, and the budget they are kept within (`--memory-cache`). */
  memoryCacheBytes: number;
  memoryCacheLimitBytes: number;
  /** The daemon's resident memory. */
  rssBytes: number;
  /** The shared tier's state and figures since the daemon started; `null` when the daemon runs without one. */
  tier: TierStatus | null;
}

export const Status = request<StatusParams, StatusResult>({
  method: 'daemon/status',
  op: 0x08,
  params: {
    // In binary: `u8` 1 and `strings` scope, or `u8` 0.
    writeBinary(encoder, p) {
      if (p?.scope === undefined) encoder.u8(0);
      else encoder.u8(1).strings(p.scope);
    },
    readBinary: (frame) => (flag(frame, 'scope flag') ? { scope: scope(frame.strings()) } : {}),
    toJson: (p) => (p?.scope === undefined ? {} : { scope: p.scope }),
    fromJson(json) {
      if (json === undefined || json === null) return {};
      const p = object(json);
      return p.scope === undefined || p.scope === null ? {} : { scope: scope(p.scope) };
    },
  },
  result: {
    // In binary, the same JSON object as one string: status is rare and its fields grow.
    writeBinary: (encoder, r) => void encoder.string(JSON.stringify(r)),
    readBinary: (frame) => JSON.parse(frame.string()) as StatusResult,
    toJson: (r) => r,
    fromJson: (json) => object(json) as unknown as StatusResult,
  },
  errors: ['CACHE_CLOSED', 'CACHE_STORAGE'],
});

/** One held lock or waiting request, as `daemon/locks` gives it. */
export interface LockInfo {
  scope: string[];
  /** The item's id; `null` for a scope lock (a `cache/clear`). */
  id: string | null;
  mode: LockMode;
  state: 'held' | 'waiting';
  /** The `clientName` its connection gave in `initialize` (else the daemon's name for the connection, or for its own work). */
  client: string | null;
  pid: number | null;
  /** Since when it has been held (from its grant) or waiting, in milliseconds since the epoch. */
  sinceMs: number;
}

export interface LocksResult {
  locks: LockInfo[];
}

const MODES: readonly LockMode[] = ['shared', 'exclusive', 'subtree'];
const WAITING = 1;
const HAS_CLIENT = 2;
const HAS_PID = 4;

/**
 * Every held lock and every waiting request of the daemon. In binary: `u32` count, then per entry `strings` scope,
 * `u8` mode (0 shared, 1 exclusive, 2 subtree), `u8` flags (1 waiting, 2 client follows, 4 pid follows), for an
 * item `string` id, then `string` client, `u32` pid as flagged, and `f64` sinceMs.
 */
export const Locks = request<void, LocksResult>({
  method: 'daemon/locks',
  op: 0x0c,
  params: none,
  result: {
    writeBinary(encoder, r) {
      encoder.u32(r.locks.length);
      for (const lock of r.locks) {
        const flags = (lock.state === 'waiting' ? WAITING : 0) | (lock.client === null ? 0 : HAS_CLIENT) | (lock.pid === null ? 0 : HAS_PID);
        encoder.strings(lock.scope).u8(MODES.indexOf(lock.mode)).u8(flags);
        if (lock.mode !== 'subtree') encoder.string(lock.id ?? '');
        if (lock.client !== null) encoder.string(lock.client);
        if (lock.pid !== null) encoder.u32(lock.pid);
        encoder.f64(lock.sinceMs);
      }
    },
    readBinary(frame) {
      const count = frame.u32();
      const locks: LockInfo[] = [];
      for (let n = 0; n < count; n++) {
        const path = frame.strings();
        const mode = MODES[frame.u8()] ?? 'shared';
        const flags = frame.u8();
        const id = mode === 'subtree' ? null : frame.string();
        const client = flags & HAS_CLIENT ? frame.string() : null;
        const pid = flags & HAS_PID ? frame.u32() : null;
        locks.push({ scope: path, id, mode, state: flags & WAITING ? 'waiting' : 'held', client, pid, sinceMs: frame.f64() });
      }
      return { locks };
    },
    toJson: (r) => r,
    fromJson: (json) => object(json) as unknown as LocksResult,
  },
  errors: [],
});

export interface GcParams {
  /** Only count what would be removed. */
  dryRun: boolean;
}

export interface GcResult {
  dryRun: boolean;
  /** Items removed (or that would be) to bring the size within the limit, and their bytes. */
  evictedItems: number;
  evictedBytes: number;
  /** Expired items removed (or that would be), and their bytes. */
  expiredItems: number;
  expiredBytes: number;
  /** The counted size after the run (for a dry run, what it would be). */
  sizeBytes: number;
}

/** Params of one optional flag: in binary a `u8` 0 or 1; in JSON a boolean, `false` when absent. */
function flagParams<K extends string>(name: K): Layout<Record<K, boolean>> {
  const params = (value: boolean): Record<K, boolean> => ({ [name]: value }) as Record<K, boolean>;
  return {
    writeBinary: (encoder, p) => void encoder.u8(p[name] ? 1 : 0),
    readBinary: (frame) => params(flag(frame, name)),
    toJson: (p) => params(p[name]),
    fromJson: (json) => params(optionalBoolean(object(json ?? {}), name) ?? false),
  };
}

/** Runs an eviction and expiry pass now. In binary: params `u8` dryRun; result `u8` dryRun and five `f64`s in the order declared. */
export const Gc = request<GcParams, GcResult>({
  method: 'daemon/gc',
  op: 0x0d,
  params: flagParams('dryRun'),
  result: {
    writeBinary: (encoder, r) =>
      void encoder.u8(r.dryRun ? 1 : 0).f64(r.evictedItems).f64(r.evictedBytes).f64(r.expiredItems).f64(r.expiredBytes).f64(r.sizeBytes),
    readBinary: (frame) => ({
      dryRun: frame.u8() === 1,
      evictedItems: frame.f64(),
      evictedBytes: frame.f64(),
      expiredItems: frame.f64(),
      expiredBytes: frame.f64(),
      sizeBytes: frame.f64(),
    }),
    toJson: (r) => r,
    fromJson: (json) => object(json) as unknown as GcResult,
  },
  errors: ['CACHE_CLOSED', 'CACHE_STORAGE', 'CACHE_DATA_DIRECTORY_LOST'],
});

export interface VerifyParams {
  /** Mend the drift, orphan files and stray entries found. */
  fix: boolean;
}

function writeUsage(encoder: FrameEncoder, usage: ScopeUsage): void {
  encoder.f64(usage.bytes).f64(usage.items);
}

function readUsage(frame: FrameCursor): ScopeUsage {
  return { bytes: frame.f64(), items: frame.f64() };
}

/**
 * Recounts the data and compares it with the figures kept. In binary: params `u8` fix; result kept and counted
 * (each `f64` bytes, `f64` items), `strings` driftedScopes, `f64` orphanFiles, orphanBytes, strayEntries, `u8` fixed.
 */
export const Verify = request<VerifyParams, VerifyReport>({
  method: 'daemon/verify',
  op: 0x0e,
  params: flagParams('fix'),
  result: {
    writeBinary(encoder, r) {
      writeUsage(encoder, r.kept);
      writeUsage(encoder, r.counted);
      encoder.strings(r.driftedScopes).f64(r.orphanFiles).f64(r.orphanBytes).f64(r.strayEntries).u8(r.fixed ? 1 : 0);
    },
    readBinary: (frame) => ({
      kept: readUsage(frame),
      counted: readUsage(frame),
      driftedScopes: frame.strings(),
      orphanFiles: frame.f64(),
      orphanBytes: frame.f64(),
      strayEntries: frame.f64(),
      fixed: frame.u8() === 1,
    }),
    toJson: (r) => r,
    fromJson: (json) => object(json) as unknown as VerifyReport,
  },
  errors: ['CACHE_CLOSED', 'CACHE_STORAGE', 'CACHE_DATA_DIRECTORY_LOST'],
});

/** Asks the daemon to stop once its answer is on its way; answered whatever the protocol version, without `initialize`. */
export const Shutdown = request<void, void>({ method: 'shutdown', op: 0x09, params: none, result: none, errors: [] });

export interface EnableReferencesParams {
  /** What the probe file named in the handshake holds. */
  token: string;
}

export interface EnableReferencesResult {
  /** Whether later answers on this connection may carry file items. */
  enabled: boolean;
}

/**
 * Proves that this client opens the daemon's files by their paths: it sends what the probe file (named in the
 * handshake's `capabilities.references`) holds. From the answer on (requests are handled in order, so from every
 * request sent after it), `cache/get` and `cache/getset` answer values kept in files by reference. In binary: params
 * `string` token; result `u8` enabled.
 */
export const EnableReferences = request<EnableReferencesParams, EnableReferencesResult>({
  method: 'cache/enableReferences',
  op: 0x0f,
  params: {
    writeBinary: (encoder, p) => void encoder.string(p.token),
    readBinary: (frame) => ({ token: frame.string() }),
    toJson: (p) => ({ token: p.token }),
    fromJson: (json) => ({ token: string(object(json), 'token') }),
  },
  result: {
    writeBinary: (encoder, r) => void encoder.u8(r.enabled ? 1 : 0),
    readBinary: (frame) => ({ enabled: frame.u8() === 1 }),
    toJson: (r) => r,
    fromJson: (json) => ({ enabled: object(json).enabled === true }),
  },
  errors: [],
});

export interface ReadChunkParams {
  /** A handle of this connection's whose answer carried a chunked item. */
  handle: number;
  /** Read the handle's `stale` item rather than its `item`. */
  stale: boolean;
  offsetBytes: number;
  /** At most the handshake's `chunks.chunkMaxBytes`; fewer come back only at the value's end. */
  maxBytes: number;
}

function byteCount(value: unknown, name: string): number {
  if (!Number.isSafeInteger(value) || (value as number) < 0) throw invalidParams(`${name} must be a non-negative integer`);
  return value as number;
}

/**
 * Reads `maxBytes` of a chunked item's value from `offsetBytes` (fewer at its end), while its handle is held: the
 * client's requests in flight are its credit. In binary: params `u64` handle, `u8` stale, `u64` offsetBytes, `u32`
 * maxBytes; result `bytes`. In JSON the result is `{ value }`, base64.
 */
export const ReadChunk = request<ReadChunkParams, Uint8Array>({
  method: 'cache/readChunk',
  op: 0x10,
  params: {
    writeBinary: (encoder, p) => void encoder.u64(p.handle).u8(p.stale ? 1 : 0).u64(p.offsetBytes).u32(p.maxBytes),
    readBinary: (frame) => ({ handle: frame.u64(), stale: flag(frame, 'stale'), offsetBytes: frame.u64(), maxBytes: frame.u32() }),
    toJson: (p) => ({ handle: p.handle, stale: p.stale, offsetBytes: p.offsetBytes, maxBytes: p.maxBytes }),
    fromJson(json) {
      const p = object(json);
      return {
        handle: handle(p.handle),
        stale: optionalBoolean(p, 'stale') ?? false,
        offsetBytes: byteCount(p.offsetBytes, 'offsetBytes'),
        maxBytes: byteCount(p.maxBytes, 'maxBytes'),
      };
    },
  },
  result: {
    writeBinary: (encoder, r) => void encoder.bytes(r),
    readBinary: (frame) => frame.keptBytes(),
    toJson: (r) => ({ value: base64(r) }),
    fromJson(json) {
      const text = string(object(json), 'value');
      if (text.length % 4 !== 0 || !BASE64.test(text)) throw new WireError('CACHE_INVALID_VALUE', 'value must be base64 (RFC 4648, with padding)');
      return Buffer.from(text, 'base64');
    },
  },
  errors: ['CACHE_LOCK_NOT_HELD', 'CACHE_CORRUPT', 'CACHE_TOO_MANY_WAITERS', 'CACHE_STORAGE'],
});

// --- writes from reserved files (see PROTOCOL.md, "Writing a value as a file") ---------------------------------

export interface ReserveFileResult {
  /** The reservation's number, this connection's to commit or discard; never reused within the daemon's run. */
  reservation: number;
  /**
   * The file to write (absolute, 0600, empty), given only on a connection that enabled references; `null` otherwise
   * (the client then fills it with `cache/writeChunk`).
   */
  path: string | null;
}

export interface ReservationParams {
  reservation: number;
}

export interface HandleSetFileParams extends HandleParams, ReservationParams, WireExpiry {
  /** The encoding the file's bytes are in (the client's codec). */
  encoding: string;
}

export interface SetFileParams extends ItemParams, ReservationParams, WireExpiry {
  encoding: string;
  /** Seconds since the epoch; the daemon's clock when absent. */
  modified?: number | undefined;
}

function reservationOf(value: unknown): number {
  if (!Number.isSafeInteger(value) || (value as number) < 0) throw invalidParams('reservation must be a non-negative integer');
  return value as number;
}

/** What a commit of a reserved file may get besides a write's codes: the file refused, or too large for a record. */
const FILE_ERRORS: readonly WireErrorCode[] = ['CACHE_FILE_REFUSED', 'CACHE_VALUE_TOO_LARGE', 'CACHE_OVER_SIZE_LIMIT'];

/**
 * Reserves an empty private file (0600) in the daemon's `temp/` directory, for a value that any process of the
 * client's user may write and this connection then commits by number. At most 256 open per connection; they are
 * removed when the connection closes. In binary: no params; result `u64` reservation, `u8` hasPath, [`string` path].
 */
export const ReserveFile = request<void, ReserveFileResult>({
  method: 'cache/reserveFile',
  op: 0x11,
  params: none,
  result: {
    writeBinary(encoder, r) {
      encoder.u64(r.reservation);
      if (r.path === null) encoder.u8(0);
      else encoder.u8(1).string(r.path);
    },
    readBinary(frame) {
      const reservation = frame.u64();
      return { reservation, path: frame.u8() === 1 ? frame.string() : null };
    },
    toJson: (r) => ({ reservation: r.reservation, path: r.path }),
    fromJson(json) {
      const r = object(json);
      return { reservation: reservationOf(r.reservation), path: typeof r.path === 'string' ? r.path : null };
    },
  },
  errors: ['CACHE_FILE_REFUSED', 'CACHE_CLOSED', 'CACHE_STORAGE', 'CACHE_UNSAFE_DIRECTORY', 'CACHE_DATA_DIRECTORY_LOST'],
});

/**
 * Writes the value reservation `reservation`'s file holds as the item of a held getset handle (as
 * `cache/handleSet`), moving the file into the store. In binary: `u64` handle, `u64` reservation, `f64` ttlMs, `f64`
 * staleMs (0: absent), `string` encoding; no result.
 */
export const HandleSetFile = request<HandleSetFileParams, void>({
  method: 'cache/handleSetFile',
  op: 0x13,
  params: {
    writeBinary(encoder, p) {
      encoder.u64(p.handle).u64(p.reservation);
      writeExpiry(encoder, p);
      encoder.string(p.encoding);
    },
    readBinary(frame) {
      const number = frame.u64();
      const reservation = frame.u64();
      const { ttlMs, staleMs } = readExpiry(frame);
      return { handle: number, reservation, ttlMs, staleMs, encoding: encoding(frame.string()) };
    },
    toJson: (p) => ({ handle: p.handle, reservation: p.reservation, encoding: p.encoding, ...expiryJson(p) }),
    fromJson(json) {
      const p = object(json);
      const { ttlMs, staleMs } = expiry(p.ttlMs, p.staleMs);
      return { handle: handle(p.handle), reservation: reservationOf(p.reservation), encoding: encoding(string(p, 'encoding')), ttlMs, staleMs };
    },
  },
  result: none,
  errors: ['CACHE_LOCK_NOT_HELD', ...FILE_ERRORS, 'CACHE_LEASE_LOST', 'CACHE_TIER_UNAVAILABLE', 'CACHE_CLOSED', 'CACHE_STORAGE', 'CACHE_DATA_DIRECTORY_LOST'],
});

/**
 * Adds or replaces an item with the value reservation `reservation`'s file holds, under its exclusive lock (as
 * `cache/set`). In binary: `strings` scope, `string` id, `u64` reservation, `f64` modified, `f64` ttlMs, `f64` staleMs,
 * `string` encoding; no result.
 */
export const SetFile = request<SetFileParams, void>({
  method: 'cache/setFile',
  op: 0x14,
  params: {
    writeBinary(encoder, p) {
      encoder
        .strings(p.scope)
        .string(p.id)
        .u64(p.reservation)
        .f64(p.modified ?? Date.now() / 1000);
      writeExpiry(encoder, p);
      encoder.string(p.encoding);
    },
    readBinary(frame) {
      const { scope: path, id } = itemParams.readBinary(frame);
      const reservation = frame.u64();
      const modified = frame.f64();
      const { ttlMs, staleMs } = readExpiry(frame);
      return { scope: path, id, reservation, modified, ttlMs, staleMs, encoding: encoding(frame.string()) };
    },
    toJson: (p) => ({ scope: p.scope, id: p.id, reservation: p.reservation, encoding: p.encoding, modified: p.modified, ...expiryJson(p) }),
    fromJson(json) {
      const { scope: path, id } = itemParams.fromJson(json);
      const p = json as Record<string, unknown>;
      if (p.modified !== undefined && typeof p.modified !== 'number') throw invalidParams('modified must be a finite number');
      const { ttlMs, staleMs } = expiry(p.ttlMs, p.staleMs);
      return { scope: path, id, reservation: reservationOf(p.reservation), encoding: encoding(string(p, 'encoding')), modified: p.modified, ttlMs, staleMs };
    },
  },
  result: none,
  errors: [...FILE_ERRORS, 'CACHE_TIER_UNAVAILABLE', ...STORE_ERRORS],
});

export interface WriteChunkParams extends ReservationParams {
  /** Where the bytes go: exactly the bytes appended so far (appends only). */
  offsetBytes: number;
  bytes: Uint8Array;
}

/**
 * How many `cache/writeChunk`s of one connection the daemon has under way at once (each holds up to a chunk of bytes
 * until it is written); past it, a chunk is refused with `CACHE_TOO_MANY_WAITERS`, so a client keeps within it.
 */
export const CHUNK_WRITES_PER_CONNECTION = 16;

/**
 * Appends bytes to a reservation without a path (`cache/reserveFile` on a connection without references), to be
 * committed with `cache/setFile` or `cache/handleSetFile`; the running size is checked against the daemon's limits
 * at every chunk. The writer's requests in flight are its credit. In binary: `u64` reservation, `u64` offsetBytes,
 * `bytes`; no result. In JSON the bytes are `value`, base64.
 */
export const WriteChunk = request<WriteChunkParams, void>({
  method: 'cache/writeChunk',
  op: 0x12,
  params: {
    writeBinary: (encoder, p) => void encoder.u64(p.reservation).u64(p.offsetBytes).bytes(p.bytes),
    readBinary: (frame) => ({ reservation: frame.u64(), offsetBytes: frame.u64(), bytes: frame.keptBytes() }),
    toJson: (p) => ({ reservation: p.reservation, offsetBytes: p.offsetBytes, value: base64(p.bytes) }),
    fromJson(json) {
      const p = object(json);
      const text = string(p, 'value');
      if (text.length % 4 !== 0 || !BASE64.test(text)) throw new WireError('CACHE_INVALID_VALUE', 'value must be base64 (RFC 4648, with padding)');
      return { reservation: reservationOf(p.reservation), offsetBytes: byteCount(p.offsetBytes, 'offsetBytes'), bytes: Buffer.from(text, 'base64') };
    },
  },
  result: none,
  errors: ['CACHE_FILE_REFUSED', 'CACHE_VALUE_TOO_LARGE', 'CACHE_OVER_SIZE_LIMIT', 'CACHE_TOO_MANY_WAITERS', 'CACHE_STORAGE', 'CACHE_CLOSED'],
});

/**
 * Removes an uncommitted reservation's file; a number that is not this connection's open reservation is ignored. In
 * binary: `u64` reservation; no result.
 */
export const DiscardFile = request<ReservationParams, void>({
  method: 'cache/discardFile',
  op: 0x15,
  params: {
    writeBinary: (encoder, p) => void encoder.u64(p.reservation),
    readBinary: (frame) => ({ reservation: frame.u64() }),
    toJson: (p) => ({ reservation: p.reservation }),
    fromJson: (json) => ({ reservation: reservationOf(object(json).reservation) }),
  },
  result: none,
  errors: [],
});

/** A request of any params and result, for tables of methods. */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type AnyRequest = RequestMethod<any, any>;

/** Every request; each has its own binary op. */
export const REQUESTS: readonly AnyRequest[] = [
  Get, GetSet, HandleSet, Set, Delete, Clear, Status, Shutdown, List, Locks, Gc, Verify, EnableReferences, ReadChunk, ReserveFile, WriteChunk, HandleSetFile, SetFile, DiscardFile,
];

// --- the handshake, JSON only ----------------------------------------------------------------------------------

export interface InitializeParams {
  /** Names the client in the daemon's log. */
  clientName?: string;
  pid?: number;
  protocolVersion: number;
  /** Transports the client can switch to after this exchange, besides JSON; `'binary'` is the one there is. */
  transports?: string[];
  /** The client can read values' files by path (it runs on this machine): the answer says where, to be proved. */
  references?: boolean;
  /** The client reads large values in chunks (`cache/readChunk`) when it reads no files: the answer gives the sizes. */
  chunks?: boolean;
}

/** The sizes of chunked reads, for a client that offered `chunks` (both at most 1 MiB, and within a message). */
export interface ChunksCapability {
  /** Values larger than this come to the client as chunked items, unless it reads them by reference. */
  inlineMaxBytes: number;
  /** The most bytes one `cache/readChunk` answers with. */
  chunkMaxBytes: number;
}

/** Where the daemon keeps values' files, for a client that offered `references` (absolute paths). */
export interface ReferencesCapability {
  /** A file of the daemon's to read and send back (`cache/enableReferences`): it proves that the paths work. */
  probe: string;
  /** The directory that file items' `file` names are relative to. */
  blobDirectory: string;
}

export interface InitializeResult {
  daemonVersion: string;
  protocolVersion: number;
  pid: number;
  capabilities: {
    /** How values travel in JSON messages: only `'base64'`. */
    valueTransfer: 'base64';
    /** The framing of every later message on this connection: `'binary'` when the client asked for it, else `'json'`. */
    transport: 'json' | 'binary';
    /** The largest message the daemon accepts, in bytes. */
    maxMessageBytes: number;
    /** Only when the client offered `references` and the daemon keeps values in files. */
    references?: ReferencesCapability;
    /** Only when the client offered `chunks`. */
    chunks?: ChunksCapability;
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
      references: p.references === true,
      chunks: p.chunks === true,
    };
  },
});

/** Ends the connection at once (JSON only; LSP's `exit`). */
export const Exit = Object.freeze({ method: 'exit', type: new NotificationType<unknown>('exit') });
