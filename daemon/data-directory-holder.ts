/**
 * Who holds a data directory: the daemon that opens one records its pid and socket in it, so that another daemon
 * that finds the directory held can say which daemon holds it and where it listens, and a client can tell "the
 * daemon for this socket is starting, wait" from "a daemon on another socket has the data, use that socket".
 *
 * The record is `hoard-daemon.json` (mode 0600), written once the daemon holds LevelDB's lock and removed while it
 * still holds it; LevelDB ignores files it did not name. A record left by a daemon that was killed is told apart by
 * its pid: the process that holds the lock, as `/proc/locks` says (on Linux), or else a live one.
 */
import { readFile, rename, stat, unlink, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { CacheError } from '../src/errors.js';

/** The daemon that holds a data directory. */
export interface Holder {
  pid: number;
  /** The socket it listens on; `null` for a daemon that serves one client over stdio. */
  socketPath: string | null;
}

const RECORD_NAME = 'hoard-daemon.json';
/** How long a daemon that finds the directory held waits for the holder's record, which follows its lock by moments. */
const RECORD_WAIT_MS = 5000;
const RECORD_POLL_MS = 20;

/** Records that this process holds `dataDir` (a real path it holds LevelDB's lock on), replacing any older record at once. */
export async function recordHolder(dataDir: string, holder: Holder): Promise<void> {
  const path = join(dataDir, RECORD_NAME);
  const temporary = `${path}.${process.pid}`;
  await writeFile(temporary, `${JSON.stringify(holder)}\n`, { mode: 0o600 });
  await rename(temporary, path);
}

/** Removes this process's record from `dataDir`, while it still holds the lock; a directory already gone is no error. */
export async function forgetHolder(dataDir: string): Promise<void> {
  await unlink(join(dataDir, RECORD_NAME)).catch(() => {});
}

async function readRecord(dataDir: string): Promise<Holder | undefined> {
  try {
    const record = JSON.parse(await readFile(join(dataDir, RECORD_NAME), 'utf8')) as Partial<Holder>;
    if (!Number.isSafeInteger(record.pid) || (record.socketPath !== null && typeof record.socketPath !== 'string')) return undefined;
    return { pid: record.pid!, socketPath: record.socketPath };
  } catch {
    return undefined;
  }
}

/**
 * The pid that holds LevelDB's lock on `dataDir`, as `/proc/locks` says; `null` when nobody holds it, `undefined`
 * where the system does not tell.
 */
async function lockHolderPid(dataDir: string): Promise<number | null | undefined> {
  let locks: string;
  let inode: bigint;
  try {
    inode = (await stat(join(dataDir, 'LOCK'), { bigint: true })).ino;
    locks = await readFile('/proc/locks', 'utf8');
  } catch {
    return undefined;
  }
  // Lines look like `1: POSIX  ADVISORY  WRITE 1234 fd:01:5678 0 EOF`.
  for (const line of locks.split('\n')) {
    const fields = line.trim().split(/\s+/);
    const at = fields.findIndex((field) => /^[0-9a-f]+:[0-9a-f]+:\d+$/i.test(field));
    if (at > 0 && BigInt(fields[at]!.split(':')[2]!) === inode) {
      // An open file description's lock shows -1: no pid to tell.
      const pid = Number(fields[at - 1]);
      return pid > 0 ? pid : undefined;
    }
  }
  return null;
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Who holds `dataDir`, for a daemon that found it held: the holder's record once it names the process that holds
 * the lock (waiting a few seconds for a holder that has just taken it), or `{ pid }`, the lock's holder as far as
 * the system tells, when no record names it (a program that is not a hoard daemon, or a daemon of an older version).
 */
export async function findHolder(dataDir: string): Promise<Holder | { pid: number | undefined; socketPath?: undefined }> {
  const deadline = Date.now() + RECORD_WAIT_MS;
  for (;;) {
    const [record, lockPid] = await Promise.all([readRecord(dataDir), lockHolderPid(dataDir)]);
    if (record && (lockPid === undefined ? isAlive(record.pid) : lockPid === record.pid)) return record;
    // Nobody holds the lock any more: the holder has just stopped; a new attempt will get it.
    if (lockPid === null || Date.now() >= deadline) return { pid: lockPid ?? undefined };
    await delay(RECORD_POLL_MS);
  }
}

/** A daemon's refusal to start on a data directory that another process holds: `CACHE_LOCKED`, and who holds it. */
export class DataDirectoryHeld extends CacheError {
  constructor(
    message: string,
    /** The pid that holds it, when known. */
    readonly holderPid: number | undefined,
    /** Whether the holder is a daemon for the same socket, which is about to listen there: a client should wait for it. */
    readonly sameSocket: boolean,
    options?: { cause?: unknown },
  ) {
    super('CACHE_LOCKED', message, options);
  }
}

/** The error for a daemon on `socketPath` (`null` over stdio) that found `dataDir` held, naming the holder and the way out. */
export async function heldError(dataDir: string, socketPath: string | null, cause: unknown): Promise<DataDirectoryHeld> {
  const holder = await findHolder(dataDir);
  const other = 'or give this daemon another data directory (--data-dir, HOARD_DATA_DIR)';
  if (holder.socketPath === undefined) {
    const who = holder.pid === undefined ? 'another program' : `another program (pid ${holder.pid})`;
    return new DataDirectoryHeld(
      `The data directory ${dataDir} is held by ${who} that is not a hoard daemon of this version: a LevelCache, ` +
        `hoard repair, or an older daemon. Stop it, ${other}.`,
      holder.pid,
      false,
      { cause },
    );
  }
  if (holder.socketPath === null) {
    return new DataDirectoryHeld(
      `The data directory ${dataDir} is held by a private hoard daemon (pid ${holder.pid}) that serves one client over ` +
        `stdio (connectStdio); it stops when that client closes. Wait for it, ${other}.`,
      holder.pid,
      false,
      { cause },
    );
  }
  if (socketPath !== null && resolve(holder.socketPath) === resolve(socketPath)) {
    return new DataDirectoryHeld(
      `The hoard daemon pid ${holder.pid} already holds the data directory ${dataDir} for the socket ${holder.socketPath} ` +
        '(it listens there, or is about to): use it, or stop it first (hoard stop).',
      holder.pid,
      true,
      { cause },
    );
  }
  return new DataDirectoryHeld(
    `The data directory ${dataDir} is held by the hoard daemon pid ${holder.pid} on the socket ${holder.socketPath}. ` +
      `Connect to that socket (--socket or HOARD_SOCKET=${holder.socketPath}), stop that daemon ` +
      `(hoard --socket ${holder.socketPath} stop), ${other}.`,
    holder.pid,
    false,
    { cause },
  );
}
