import { CacheError, type CacheErrorCode } from '../errors.js';

/** Codes that only occur between a client and the daemon, besides every {@link CacheErrorCode}. */
export type WireErrorCode = CacheErrorCode | 'CACHE_NOT_INITIALIZED' | 'CACHE_CANCELLED' | 'CACHE_PARSE_ERROR' | 'CACHE_INVALID_REQUEST';

/** The JSON-RPC error number for each code; `error.data.code` carries the name, and the binary transport only the name. */
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
  CACHE_TOO_MANY_WAITERS: 16,
  CACHE_PARSE_ERROR: -32700,
  CACHE_INVALID_REQUEST: -32600,
  CACHE_INVALID_PARAMS: -32602,
  CACHE_CANCELLED: -32800,
  CACHE_INTERNAL: -32603,
});

/** What `error.data` holds in every error the daemon sends in JSON. */
export interface WireErrorData {
  code: WireErrorCode;
  [detail: string]: unknown;
}

/** A failure to report to the peer with its wire code, whatever the transport. */
export class WireError extends Error {
  override name = 'WireError';

  constructor(
    readonly code: WireErrorCode,
    message: string,
    readonly details: Record<string, unknown> = {},
  ) {
    super(message);
  }
}

/** The error for params that do not have the method's shape. */
export function invalidParams(why: string): WireError {
  return new WireError('CACHE_INVALID_PARAMS', `Invalid params: ${why}.`);
}

/** The error a daemon's coded answer stands for; codes only the wire knows (such as `CACHE_CANCELLED`) keep their name. */
export function fromWireError(code: string, message: string): CacheError {
  if (code.startsWith('CACHE_')) return new CacheError(code as CacheErrorCode, message);
  return new CacheError('CACHE_INTERNAL', `The hoard daemon answered with ${code}: ${message}`);
}
