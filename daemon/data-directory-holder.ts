/**
 * Who holds a data directory: every daemon records its pid and socket in the directory before it tries LevelDB's
 * lock, so that another daemon that finds the directory held can name the daemon that holds it and where it listens,
 * and a client can tell "the daemon for this socket is starting: wait" from "a daemon on another socket has the data:
 * use that socket".
 *
 * Each daemon writes a record of its own, `hoard-daemon-<pid>.json` (mode 0600), before it opens the database, and
 * removes it when it stops or fails to start; LevelDB ignores files it did not name. The holder is the process that
 * holds the lock on LevelDB's `LOCK` file, as `/proc/locks` tells (on Linux), and its record says where it listens,
 * from the moment it takes the lock (even while LevelDB is still recovering its log). Records of processes that are
 * gone (a daemon that was killed) are removed by the next daemon that holds the lock.
 */
import { mkdir, readdir, readFile, stat, unlink, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { CacheError } from '../src/errors.js';

/** The daemon that holds a data directory. */
export interface Holder {
  pid: number;
  /** The socket it listens on; `null` for a daemon that serves one client over stdio. */
  socketPath: string | null;
}

const RECORD = /^hoard-daemon-(\d+)\.json$/;

function recordPath(dataDir: string, pid: number): string {
  return join(dataDir, `hoard-daemon-${pid}.json`);
}

/** The data directories (resolved) whose record this process has written, for a daemon it runs. */
const recorded = new Set<string>();

/**
 * Records this process as a daemon for `socketPath` in `dataDir` (created 0700 if missing), before it tries the lock,
 * and resolves to the way to remove that record. A directory it cannot write to is no error here (opening the
 * database then says what is wrong), and neither is another daemon of this process on the same directory, whose
 * record stays: the pid is the same.
 */
export async function writeHolderRecord(dataDir: string, socketPath: string | null): Promise<() => Promise<void>> {
  const key = resolve(dataDir);
  if (recorded.has(key)) return async () => {};
  recorded.add(key);
  const path = recordPath(dataDir, process.pid);
  const remove = async (): Promise<void> => {
    recorded.delete(key);
    await unlink(path).catch(() => {});
  };
  const holder: Holder = { pid: process.pid, socketPath: socketPath && resolve(socketPath) };
  try {
    await mkdir(dataDir, { recursive: true, mode: 0o700 });
    // A record of this pid already there is a dead process's, whose pid this one has been given.
    await writeFile(path, `${JSON.stringify(holder)}\n`, { mode: 0o600 });
  } catch {
    // Without its record, this daemon is named by its pid only.
  }
  return remove;
}

/** Removes the records of processes that are gone, for the daemon that holds the lock. */
export async function removeStaleHolderRecords(dataDir: string): Promise<void> {
  for (const name of await readdir(dataDir).catch(() => [])) {
    const pid = Number(RECORD.exec(name)?.[1]);
    if (pid > 0 && pid !== process.pid && !isAlive(pid)) await unlink(join(dataDir, name)).catch(() => {});
  }
}

async function readRecord(dataDir: string, pid: number): Promise<Holder | undefined> {
  try {
    const record = JSON.parse(await readFile(recordPath(dataDir, pid), 'utf8')) as Partial<Holder>;
    if (record.pid !== pid || (record.socketPath !== null && typeof record.socketPath !== 'string')) return undefined;
    return { pid, socketPath: record.socketPath };
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
 * Who holds `dataDir`, for a daemon that found it held: the holder's record; `{ pid }` for a holder that keeps no
 * record (a program that is not a hoard daemon, or a daemon of an older version); `undefined` when the system does
 * not tell who holds the lock, or nobody holds it any more.
 */
async function findHolder(dataDir: string): Promise<Holder | { pid: number; socketPath?: undefined } | undefined> {
  const pid = await lockHolderPid(dataDir);
  if (pid === null) return undefined;
  if (pid !== undefined) return (await readRecord(dataDir, pid)) ?? { pid };
  // Without /proc/locks: the other live daemons' records, when they all name one socket.
  const others: Holder[] = [];
  for (const name of await readdir(dataDir).catch(() => [])) {
    const other = Number(RECORD.exec(name)?.[1]);
    const record = other > 0 && other !== process.pid && isAlive(other) ? await readRecord(dataDir, other) : undefined;
    if (record) others.push(record);
  }
  return others.length > 0 && others.every((other) => other.socketPath === others[0]!.socketPath) ? others[0] : undefined;
}

/** A daemon's refusal to start on a data directory that another process holds: `CACHE_LOCKED`, and who holds it. */
export class DataDirectoryHeld extends CacheError {
  constructor(
    message: string,
    /** The pid that holds it, when known. */
    readonly holderPid: number | undefined,
    /**
     * Whether a client should retry the socket: the holder is a daemon for the same socket, about to listen there,
     * or nobody can tell who holds the directory.
     */
    readonly retry: boolean,
    options?: { cause?: unknown },
  ) {
    super('CACHE_LOCKED', message, options);
  }
}

/** The error for a daemon on `socketPath` (`null` over stdio) that found `dataDir` held, naming the holder and the way out. */
export async function heldError(dataDir: string, socketPath: string | null, cause: unknown): Promise<DataDirectoryHeld> {
  const holder = await findHolder(dataDir);
  const other = 'or give this daemon another data directory (--data-dir, HOARD_DATA_DIR)';
  if (holder === undefined) {
    return new DataDirectoryHeld(`Another hoard daemon, or another program, holds the data directory ${dataDir}.`, undefined, true, { cause });
  }
  if (holder.socketPath === undefined) {
    return new DataDirectoryHeld(
      `Another program (pid ${holder.pid}), not a hoard daemon of this version, holds the data directory ${dataDir}: ` +
        `a LevelCache, hoard repair, or an older daemon. Stop it, ${other}.`,
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
