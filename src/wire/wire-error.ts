import { CacheError, type CacheErrorCode } from '../errors.js';

/** Codes that only occur between a client and the daemon: the client raises each as {@link WIRE_ONLY_ERRORS} says. */
export type WireOnlyCode = 'CACHE_NOT_INITIALIZED' | 'CACHE_CANCELLED' | 'CACHE_PARSE_ERROR' | 'CACHE_INVALID_REQUEST';

/** Every code the daemon may send: each {@link CacheErrorCode}, and the codes only the wire knows. */
export type WireErrorCode = CacheErrorCode | WireOnlyCode;

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
  CACHE_DATA_DIRECTORY_LOST: 16,
  CACHE_TOO_MANY_WAITERS: 17,
  CACHE_OVER_SIZE_LIMIT: 18,
  CACHE_LEASE_LOST: 19,
  CACHE_TIER_UNAVAILABLE: 20,
  CACHE_FILE_REFUSED: 21,
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

/**
 * What a client raises for each code only the wire knows, so that a caller sees only a {@link CacheErrorCode}:
 * a request the daemon could not take as its protocol (not JSON, not a request, a method or op it does not know,
 * a request before `initialize`) is `CACHE_PROTOCOL_MISMATCH`, as JSON-RPC's "method not found" is: hoard's own
 * client meets them only with a daemon of another version. A request the daemon cancelled rejects as an aborted
 * call does, with an `AbortError`.
 */
export const WIRE_ONLY_ERRORS: Readonly<Record<WireOnlyCode, CacheErrorCode | 'AbortError'>> = Object.freeze({
  CACHE_NOT_INITIALIZED: 'CACHE_PROTOCOL_MISMATCH',
  CACHE_PARSE_ERROR: 'CACHE_PROTOCOL_MISMATCH',
  CACHE_INVALID_REQUEST: 'CACHE_PROTOCOL_MISMATCH',
  CACHE_CANCELLED: 'AbortError',
});

/**
 * The error a daemon's coded answer stands for: a {@link CacheError} with one of {@link CacheErrorCode} (a code
 * this client does not know, from a newer daemon, is `CACHE_INTERNAL` and named in the message), or an
 * `AbortError` for a request the daemon cancelled.
 */
export function fromWireError(code: string, message: string): Error {
  if (Object.hasOwn(WIRE_ONLY_ERRORS, code)) {
    const raised = WIRE_ONLY_ERRORS[code as WireOnlyCode];
    if (raised === 'AbortError') return new DOMException(message, 'AbortError');
    return new CacheError(raised, `${message} The hoard daemon and this client disagree on the protocol; if the daemon is older, \`hoard stop\` replaces it.`);
  }
  if (Object.hasOwn(ERROR_NUMBERS, code)) return new CacheError(code as CacheErrorCode, message);
  return new CacheError('CACHE_INTERNAL', `The hoard daemon answered with ${code}: ${message}`);
}
