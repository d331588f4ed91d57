/**
 * What a daemon that found its data directory held tells its starter: the holder, as the instance lock's holder file
 * names it (see `src/level/exclusive-open.ts`), so that a client can tell "the daemon for this socket is starting:
 * wait" from "a daemon on another socket, or another program, has the data: use that socket, or stop it".
 */
import { resolve } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { CacheError } from '../src/errors.js';
import { type Holder, holderOf, lockedError, readHolder } from '../src/level/exclusive-open.js';

/**
 * How long a holder that does not say who it is gets to write its holder file, which it does right after taking the
 * lock, and how often it is looked at meanwhile. After that, its file could not be written (a full disk, say).
 */
const UNKNOWN_HOLDER_WAIT_MS = 3000;
const UNKNOWN_HOLDER_POLL_MS = 50;

/** A daemon's refusal to start on a data directory that another process holds: `CACHE_LOCKED`, and who holds it. */
export class DataDirectoryHeld extends CacheError {
  constructor(
    message: string,
    /** The pid that holds it, when known. */
    readonly holderPid: number | undefined,
    /**
     * Whether a client should retry the socket: the holder is a daemon for the same socket, about to listen there,
     * or nobody can tell who holds the directory yet.
     */
    readonly retry: boolean,
    options?: { cause?: unknown },
  ) {
    super('CACHE_LOCKED', message, options);
  }
}

/**
 * The error for a daemon on `socketPath` (`null` over stdio) that found `dataDir` held, naming the holder and the way
 * out; a running repair's own `CACHE_LOCKED` is returned as it is, since it is no daemon to wait for or connect to. A
 * holder that does not say who it is yet is looked at again for up to {@link UNKNOWN_HOLDER_WAIT_MS}.
 */
export async function heldError(dataDir: string, socketPath: string | null, cause: unknown): Promise<CacheError> {
  let holder: Holder | undefined = holderOf(cause);
  // A holder that has just taken the lock is writing who it is (most likely a daemon starting for this same socket).
  for (let waitedMs = 0; holder?.role === 'unknown' && waitedMs < UNKNOWN_HOLDER_WAIT_MS; waitedMs += UNKNOWN_HOLDER_POLL_MS) {
    await delay(UNKNOWN_HOLDER_POLL_MS);
    holder = (await readHolder(dataDir)) ?? holder;
  }
  const other = 'or give this daemon another data directory (--data-dir, HOARD_DATA_DIR)';
  if (holder?.role === 'repair') return holderOf(cause)?.role === 'repair' ? (cause as CacheError) : lockedError(dataDir, holder, cause);
  if (holder === undefined) {
    return new DataDirectoryHeld(`Another hoard daemon, or another program, holds the data directory ${dataDir}.`, undefined, true, { cause });
  }
  if (holder.role === 'unknown') {
    // Its holder file could not be written: a daemon for this socket would be listening by now, so nobody to wait for.
    return new DataDirectoryHeld(
      `The process pid ${holder.pid} holds the data directory ${dataDir} and does not say who it is (its holder file ` +
        `could not be written: is the disk full?): another hoard daemon, or another program such as a LevelCache. Stop it, ${other}.`,
      holder.pid,
      false,
      { cause },
    );
  }
  if (holder.role === 'library') {
    return new DataDirectoryHeld(
      `Another program (pid ${holder.pid}), not a hoard daemon, holds the data directory ${dataDir}: a LevelCache, or an ` +
        `older daemon. Stop it, ${other}.`,
      holder.pid,
      false,
      { cause },
    );
  }
  if (holder.socketPath === null) {
    return new DataDirectoryHeld(
      `A private hoard daemon (pid ${holder.pid}) that serves one client over stdio (connectStdio) holds the data ` +
        `directory ${dataDir}; it stops when that client closes. Wait for it, ${other}.`,
      holder.pid,
      false,
      { cause },
    );
  }
  if (socketPath !== null && holder.socketPath === resolve(socketPath)) {
    return new DataDirectoryHeld(
      `The hoard daemon pid ${holder.pid} already holds the data directory ${dataDir} for the socket ${holder.socketPath} ` +
        '(it listens there, or is about to): use it, or stop it first (hoard stop).',
      holder.pid,
      true,
      { cause },
    );
  }
  return new DataDirectoryHeld(
    `The hoard daemon pid ${holder.pid} on the socket ${holder.socketPath} holds the data directory ${dataDir}. ` +
      `Connect to that socket (--socket or HOARD_SOCKET=${holder.socketPath}), stop that daemon ` +
      `(hoard --socket ${holder.socketPath} stop), ${other}.`,
    holder.pid,
    false,
    { cause },
  );
}
