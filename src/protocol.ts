/**
 * The wire between the daemon and its clients: JSON-RPC 2.0 with LSP framing (see PROTOCOL.md).
 * Both sides import these declarations; nothing here touches a socket.
 */
import { NotificationType, NotificationType0, RequestType, RequestType0 } from 'vscode-jsonrpc';
import type { CacheErrorCode } from './errors.js';

/** One JSON-RPC message with LSP framing, for the handshake that both sides write by hand. */
export function lspFrame(message: unknown): Buffer {
  const body = Buffer.from(JSON.stringify(message), 'utf8');
  return Buffer.concat([Buffer.from(`Content-Length: ${body.length}\r\n\r\n`, 'ascii'), body]);
}

/** Bumped on any change that an older peer would misread. */
export const PROTOCOL_VERSION = 1;

/** A stored value on the wire: its bytes as base64, with the name of the encoding it was written with. */
export interface WireItem {
  modified: number;
  encoding: string;
  value: string;
}

export interface InitializeParams {
  clientName: string;
  pid: number;
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

export interface ItemParams {
  scope: string[];
  id: string;
}

export interface GetResult {
  handle: number;
  item: WireItem | null;
}

export interface GetSetParams extends ItemParams {
  wait?: boolean;
}

export interface GetSetResult {
  /** `null` when `wait` was false and the lock was taken. */
  handle: number | null;
  item: WireItem | null;
}

export interface SetParams extends ItemParams {
  value: string;
  encoding: string;
  modified?: number;
}

export interface HandleSetParams {
  handle: number;
  value: string;
  encoding: string;
}

export interface HandleParams {
  handle: number;
}

export interface ScopeParams {
  scope: string[];
}

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

export const Initialize = new RequestType<InitializeParams, InitializeResult, void>('initialize');
export const Shutdown = new RequestType0<null, void>('shutdown');
export const Exit = new NotificationType0('exit');
export const Get = new RequestType<ItemParams, GetResult, void>('cache/get');
export const GetSet = new RequestType<GetSetParams, GetSetResult, void>('cache/getset');
export const HandleSet = new RequestType<HandleSetParams, null, void>('cache/handleSet');
/** A notification: no reply, and the daemon handles it before any later message on the connection. */
export const Release = new NotificationType<HandleParams>('cache/release');
export const Set = new RequestType<SetParams, null, void>('cache/set');
export const Delete = new RequestType<ItemParams, null, void>('cache/delete');
export const Clear = new RequestType<ScopeParams, null, void>('cache/clear');
export const Status = new RequestType0<StatusResult, void>('daemon/status');

/** Codes that only occur between a client and the daemon. */
export type WireErrorCode = CacheErrorCode | 'CACHE_NOT_INITIALIZED' | 'CACHE_CANCELLED' | 'CACHE_PARSE_ERROR' | 'CACHE_INVALID_REQUEST';

/** The JSON-RPC error number for each code; `error.data.code` carries the name. */
export const ERROR_NUMBERS: Readonly<Record<WireErrorCode, number>> = Object.freeze({
  CACHE_INVALID_VALUE: 1,
  CACHE_LOCK_NOT_HELD: 2,
  CACHE_LOCKED: 3,
  CACHE_CLOSED: 4,
  CACHE_ENCODING_MISMATCH: 5,
  CACHE_CORRUPT: 6,
  CACHE_STORAGE: 7,
  CACHE_PROTOCOL_MISMATCH: 8,
  CACHE_NOT_INITIALIZED: 9,
  CACHE_CONNECTION_LOST: 10,
  CACHE_DAEMON_START_FAILED: 11,
  CACHE_UNSAFE_DIRECTORY: 12,
  CACHE_SOCKET_PATH_TOO_LONG: 13,
  CACHE_NO_DAEMON: 14,
  CACHE_VALUE_TOO_LARGE: 15,
  CACHE_PARSE_ERROR: -32700,
  CACHE_INVALID_REQUEST: -32600,
  CACHE_INVALID_PARAMS: -32602,
  CACHE_CANCELLED: -32800,
  CACHE_INTERNAL: -32603,
});

/** What `error.data` holds in every error the daemon sends. */
export interface WireErrorData {
  code: WireErrorCode;
  [detail: string]: unknown;
}

/**
 * The binary transport a client may ask for in `initialize` (`transports: ['binary']`); see PROTOCOL.md.
 * Every frame is a little-endian u32 length of what follows, a u8 op, a u32 request id, then the op's fields.
 */
export const BinaryOp = Object.freeze({
  Get: 0x01,
  GetSet: 0x02,
  HandleSet: 0x03,
  Release: 0x04,
  Set: 0x05,
  Delete: 0x06,
  Clear: 0x07,
  Status: 0x08,
  Shutdown: 0x09,
  Cancel: 0x0a,
  Result: 0x80,
  Error: 0x81,
});

/** Bytes before a frame's fields: the length, the op and the request id. */
export const FRAME_HEADER_BYTES = 9;
