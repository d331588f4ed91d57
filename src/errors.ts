/** The stable codes a {@link CacheError} carries; messages may change, codes never do. */
export type CacheErrorCode =
  /** The codec cannot encode the value; the item's previous value is untouched. */
  | 'CACHE_INVALID_VALUE'
  /** A setter was used after its lock was released (or, remotely, after its grant ended). */
  | 'CACHE_LOCK_NOT_HELD'
  /** The storage is held by another process or another open cache. */
  | 'CACHE_LOCKED'
  /** The cache was closed. */
  | 'CACHE_CLOSED'
  /** The stored value was written with another encoding than this cache's codec. */
  | 'CACHE_ENCODING_MISMATCH'
  /** The stored record cannot be read back (damaged or written by an unknown version). */
  | 'CACHE_CORRUPT'
  /** The storage failed (disk full, I/O error); the cause says more. */
  | 'CACHE_STORAGE'
  /** The data directory was deleted, replaced or taken by another process while open; nothing more is written to it. */
  | 'CACHE_DATA_DIRECTORY_LOST'
  /** The connection to the daemon closed while the call was under way; handles held over it are void. */
  | 'CACHE_CONNECTION_LOST'
  /** The client and the daemon speak incompatible protocol versions; the message says how to replace the daemon. */
  | 'CACHE_PROTOCOL_MISMATCH'
  /** The value would make a message larger than the daemon accepts (`maxMessageBytes`); nothing was sent. */
  | 'CACHE_VALUE_TOO_LARGE'
  /** No daemon answers and `autoStart` is off. */
  | 'CACHE_NO_DAEMON'
  /** No daemon could be started; the message says why, or where its log is. */
  | 'CACHE_DAEMON_START_FAILED'
  /** Someone else could have put or could replace the socket: its directory, a directory on the way, or the socket itself. */
  | 'CACHE_UNSAFE_DIRECTORY'
  /** The socket path is longer than Unix sockets allow. */
  | 'CACHE_SOCKET_PATH_TOO_LONG'
  /**
   * The connection already has as many requests waiting for locks as the daemon allows (`--max-waiters`, default
   * 10,000); this one was refused without waiting. Those already waiting are unaffected.
   */
  | 'CACHE_TOO_MANY_WAITERS'
  /**
   * The value alone takes more than the cache's size limit (`--max-size`), so it is not stored; the item's previous value
   * is untouched.
   */
  | 'CACHE_OVER_SIZE_LIMIT'
  /**
   * A `getset` holder's write was refused because its lease in the shared tier was lost: its daemon was paused or cut
   * off past the lease time, or a newer set, delete or clear came from another machine; nothing was written.
   */
  | 'CACHE_LEASE_LOST'
  /**
   * The shared tier failed or timed out, and the daemon runs it in strict mode (`--tier-strict`): the value was not
   * written locally, and the item's local copy was dropped (a command that timed out may still reach the tier later).
   */
  | 'CACHE_TIER_UNAVAILABLE'
  /**
   * A file offered as a value was refused: not a regular file of this user with one link, changed while it was committed,
   * or not a reservation of this cache; nothing was written, and the item's previous value is untouched.
   */
  | 'CACHE_FILE_REFUSED'
  /** The daemon refused the request's parameters (a client bug, or a client of another version). */
  | 'CACHE_INVALID_PARAMS'
  /** The daemon failed in an unexpected way; its log has the details. */
  | 'CACHE_INTERNAL';

/** An expected failure of a cache operation, identified by its {@link CacheErrorCode}. */
export class CacheError extends Error {
  override name = 'CacheError';

  constructor(
    readonly code: CacheErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/** Whether `error` is a {@link CacheError} with the given code, without relying on `instanceof` across realms. */
export function isCacheError(error: unknown, code?: CacheErrorCode): error is CacheError {
  return (
    typeof error === 'object' &&
    error !== null &&
    (error as { name?: unknown }).name === 'CacheError' &&
    typeof (error as { code?: unknown }).code === 'string' &&
    (code === undefined || (error as { code: unknown }).code === code)
  );
}

/** A `CACHE_STORAGE` error for a failed disk operation, whose message ends with the system's reason. */
export function storageError(what: string, cause: unknown): CacheError {
  const detail = cause instanceof Error ? cause.message : String(cause);
  return new CacheError('CACHE_STORAGE', `${what}: ${detail}`, { cause });
}
