/**
 * Opening a LevelDB directory so that this process never tries to open one it already holds.
 *
 * Why: LevelDB holds a POSIX lock on the directory's `LOCK` file while a database is open, so that only one process
 * can open it. A second open of the directory in the same process fails, but on the way LevelDB closes the
 * descriptor it opened on `LOCK`, and closing any descriptor of a file drops every POSIX lock the process holds on
 * that file: the first handle goes on working, unlocked, and another process could then open the database too and
 * damage it. So this process never tries to reopen a directory it holds. It keeps a registry of the directories it has
 * open, by real path (a link to the same directory is the same directory), shared across copies of this module
 * in the process (two installed copies of hoard, say) through a global symbol; and, since a worker thread has a
 * registry of its own, it also asks `/proc/locks` whether a thread of this process holds the directory's lock.
 */
import { readFile, realpath, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { Level } from 'level';
import { CacheError } from '../errors.js';

/** The directories this process holds open, shared by every copy of this module in the process's main realm. */
const openDirectories: Set<string> = ((globalThis as Record<symbol, unknown>)[Symbol.for('hoard.openLevelDirectories')] ??=
  new Set<string>()) as Set<string>;

/** Whether a thread of this process (a worker, say) holds LevelDB's lock on `directory`, as `/proc/locks` tells. */
async function heldByThisProcess(directory: string): Promise<boolean> {
  let inode: bigint;
  try {
    inode = (await stat(join(directory, 'LOCK'), { bigint: true })).ino;
  } catch {
    return false;
  }
  let locks: string;
  try {
    locks = await readFile('/proc/locks', 'utf8');
  } catch {
    return false;
  }
  // Lines look like `1: POSIX  ADVISORY  WRITE 1234 fd:01:5678 0 EOF`.
  return locks.split('\n').some((line) => {
    const fields = line.trim().split(/\s+/);
    const device = fields.find((field) => /^[0-9a-f]+:[0-9a-f]+:\d+$/i.test(field));
    const pid = fields[fields.indexOf(device ?? '') - 1];
    return device !== undefined && pid === String(process.pid) && BigInt(device.split(':')[2]!) === inode;
  });
}

export function lockedError(directory: string, cause?: unknown): CacheError {
  return new CacheError(
    'CACHE_LOCKED',
    `The cache directory ${directory} is open in another process or another LevelCache. ` +
      'LevelDB allows one user at a time: to share a cache between processes, run the hoard daemon and connect() to it.',
    { cause },
  );
}

/** Turns LevelDB's refusal to open `directory` into an error that names the directory and the remedy. */
export function openError(directory: string, error: unknown): CacheError {
  const cause = (error as { cause?: { code?: unknown; message?: unknown } }).cause;
  if (cause?.code === 'LEVEL_LOCKED') return lockedError(directory, error);
  if (cause?.code === 'LEVEL_CORRUPTION') {
    return new CacheError(
      'CACHE_CORRUPT',
      `The cache database in ${directory} is damaged (${String(cause.message)}). Run \`hoard repair --data-dir ${directory}\` ` +
        'to recover what can be recovered, or delete the directory: it only holds a cache.',
      { cause: error },
    );
  }
  return new CacheError(
    'CACHE_STORAGE',
    `Cannot open the cache database in ${directory}: ${String(cause?.message ?? error)}. Check that the directory is ` +
      'readable and writable by you, or choose another one (--data-dir, HOARD_DATA_DIR).',
    { cause: error },
  );
}

/**
 * Opens the LevelDB database in the existing `directory`, unless this process holds it already, and registers it
 * as held until {@link releaseDirectory}. Resolves to the database and the directory's real path.
 * @throws CacheError `CACHE_LOCKED` when another process or another open store in this process holds it;
 * `CACHE_CORRUPT` or `CACHE_STORAGE` (see {@link openError}) when LevelDB cannot open it.
 */
export async function openExclusive(directory: string): Promise<{ db: Level<Buffer, Buffer>; directory: string }> {
  const real = await realpath(directory);
  // Registered before anything else is awaited, so that a second open in this process that starts meanwhile is refused
  // instead of reaching LevelDB (whose failed open would drop the first one's lock).
  if (openDirectories.has(real)) throw lockedError(real);
  openDirectories.add(real);
  if (await heldByThisProcess(real)) {
    openDirectories.delete(real);
    throw lockedError(real);
  }
  const db = new Level<Buffer, Buffer>(real, { keyEncoding: 'buffer', valueEncoding: 'buffer' });
  try {
    await db.open();
  } catch (error) {
    openDirectories.delete(real);
    throw openError(real, error);
  }
  return { db, directory: real };
}

/** Ends this process's hold on `directory` (a real path from {@link openExclusive}) once its database is closed. */
export function releaseDirectory(directory: string): void {
  openDirectories.delete(directory);
}
