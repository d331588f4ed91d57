/**
 * Opening a LevelDB directory so that one process at a time uses it, and this process never tries to open one it
 * already holds.
 *
 * Why: LevelDB holds a POSIX lock on the directory's `LOCK` file while a database is open, so that only one process
 * can open it. A second open of the directory in the same process fails, but on the way LevelDB closes the
 * descriptor it opened on `LOCK`, and closing any descriptor of a file drops every POSIX lock the process holds on
 * that file: the first handle goes on working, unlocked, and another process could then open the database too and
 * damage it. So this process never tries to reopen a directory it holds. It keeps a registry of the directories it has
 * open, by real path (a link to the same directory is the same directory), shared across copies of this module
 * in the process (two installed copies of hoard, say) through a global symbol; and, since a worker thread has a
 * registry of its own, it also asks `/proc/locks` whether a thread of this process holds the directory's lock.
 *
 * LevelDB's lock is not enough on its own: its repair takes no lock and must run with the database closed, so a
 * daemon could open the database in the middle of a repair. Every user of a data directory (a store while it is
 * open, `hoard repair` for the whole repair and index rebuild) first takes the instance lock: a second, tiny LevelDB
 * in the directory's `instance-lock/`, whose POSIX lock, like any, ends with the process that holds it, so there is
 * never a stale lock to clean up (Node has no `flock`). The holder writes who it is to `instance-lock/holder.json`;
 * whoever finds the lock taken believes that file only when `/proc/locks` says its pid holds the lock.
 */
import { mkdir, readFile, realpath, rename, rm, stat, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Level } from 'level';
import { CacheError } from '../errors.js';
import { lockHolderPid } from './lock-holder-pid.js';

/** The directories this process holds open, shared by every copy of this module in the process's main realm. */
const openDirectories: Set<string> = ((globalThis as Record<symbol, unknown>)[Symbol.for('hoard.openLevelDirectories')] ??=
  new Set<string>()) as Set<string>;

/** The subdirectory of a data directory that holds the instance lock. */
export const INSTANCE_LOCK_DIRECTORY = 'instance-lock';
const HOLDER_FILE = 'holder.json';

/** Who opens a data directory: a daemon (on a socket, or serving one client over stdio), a repair, or a program's own LevelCache. */
export type HolderRole = { role: 'daemon'; socketPath: string | null } | { role: 'repair' } | { role: 'library' };
/** Who holds a data directory, as its holder file says; `unknown` while a holder that has just taken the lock writes it. */
export type Holder = { pid: number } & (HolderRole | { role: 'unknown' });

/** The instance locks this copy of the module holds, by real path of their data directory. */
const instanceLocks = new Map<string, Level<string, string>>();
/** The holders that `CACHE_LOCKED` errors of this module name. */
const namedHolders = new WeakMap<object, Holder>();

/** The pid that holds a POSIX lock on `file`, as `/proc/locks` tells, or `undefined`. */
async function lockingPid(file: string): Promise<number | undefined> {
  try {
    const { dev, ino } = await stat(file, { bigint: true });
    return lockHolderPid(await readFile('/proc/locks', 'utf8'), { dev, ino });
  } catch {
    return undefined;
  }
}

/** Whether a thread of this process (a worker, say) holds LevelDB's lock on `directory` or its instance lock. */
async function heldByThisProcess(directory: string): Promise<boolean> {
  const files = [join(directory, 'LOCK'), join(directory, INSTANCE_LOCK_DIRECTORY, 'LOCK')];
  return (await Promise.all(files.map(lockingPid))).includes(process.pid);
}

/** Who holds `directory`'s instance lock, when its holder file says and `/proc/locks` agrees. */
export async function readHolder(directory: string): Promise<Holder | undefined> {
  const pid = await lockingPid(join(directory, INSTANCE_LOCK_DIRECTORY, 'LOCK'));
  if (pid === undefined) return undefined;
  try {
    const holder = JSON.parse(await readFile(join(directory, INSTANCE_LOCK_DIRECTORY, HOLDER_FILE), 'utf8')) as Holder;
    if (holder.pid === pid) return holder;
  } catch {
    // No holder file yet (its holder is writing it), or one from an earlier holder.
  }
  return { pid, role: 'unknown' };
}

/** The holder that a `CACHE_LOCKED` error from this module names, when it could tell. */
export function holderOf(error: unknown): Holder | undefined {
  return typeof error === 'object' && error !== null ? namedHolders.get(error) : undefined;
}

/** The `CACHE_LOCKED` error for `directory`, naming its holder when it is known. */
export function lockedError(directory: string, holder?: Holder, cause?: unknown): CacheError {
  let message: string;
  if (holder?.role === 'repair') {
    message = `hoard repair (pid ${holder.pid}) is repairing the cache directory ${directory}: wait until it has finished, then try again.`;
  } else if (holder?.role === 'daemon') {
    const where = holder.socketPath === null ? 'serving one client over stdio' : `listening on ${holder.socketPath}`;
    message = `The cache directory ${directory} is held by the hoard daemon (pid ${holder.pid}) ${where}: connect to it, or stop it first.`;
  } else {
    message =
      `The cache directory ${directory} is open in another process${holder ? ` (pid ${holder.pid})` : ''} or another LevelCache. ` +
      'LevelDB allows one user at a time: to share a cache between processes, run the hoard daemon and connect() to it.';
  }
  const error = new CacheError('CACHE_LOCKED', message, { cause });
  if (holder) namedHolders.set(error, holder);
  return error;
}

/** Turns LevelDB's refusal to open `directory` into an error that names the directory and the remedy. */
export async function openError(directory: string, error: unknown): Promise<CacheError> {
  const cause = (error as { cause?: { code?: unknown; message?: unknown } }).cause;
  if (cause?.code === 'LEVEL_LOCKED') return lockedError(directory, undefined, error);
  const damage = cause?.code === 'LEVEL_CORRUPTION' ? String(cause.message) : await missingManifest(directory);
  if (damage !== undefined) {
    return new CacheError(
      'CACHE_CORRUPT',
      `The cache database in ${directory} is damaged (${damage}). Run \`hoard repair --data-dir ${directory}\` ` +
        'to recover what can be recovered, or delete the directory: it only holds a cache.',
      { cause: error },
    );
  }
  return new CacheError(
    'CACHE_STORAGE',
    `Cannot open the cache database in ${directory}: ${String(cause?.message ?? error)}. Check that the directory is ` +
      `readable and writable by you, or choose another one (--data-dir, HOARD_DATA_DIR); if it is, \`hoard repair --data-dir ${directory}\` ` +
      'may recover a damaged database.',
    { cause: error },
  );
}

/** Says so when `CURRENT` names a manifest that is not there (an interrupted repair, a deleted file), else `undefined`. */
async function missingManifest(directory: string): Promise<string | undefined> {
  let current: string;
  try {
    current = (await readFile(join(directory, 'CURRENT'), 'utf8')).trim();
  } catch {
    return undefined;
  }
  if (!/^MANIFEST-\d+$/.test(current)) return `its CURRENT file names no manifest: ${JSON.stringify(current.slice(0, 40))}`;
  const there = await stat(join(directory, current)).then(
    () => true,
    (failure: NodeJS.ErrnoException) => failure.code !== 'ENOENT',
  );
  return there ? undefined : `its CURRENT file names ${current}, which is missing`;
}

/**
 * Takes the instance lock of the existing data directory `directory` (a real path) for `holder`, unless this process
 * holds it already, and registers it as held until {@link releaseDirectory}.
 * @throws CacheError `CACHE_LOCKED`, naming the holder when it can, when another process or another open store in
 * this process holds it.
 */
export async function lockDirectory(directory: string, holder: HolderRole): Promise<void> {
  // Registered before anything else is awaited, so that a second open in this process that starts meanwhile is refused
  // instead of reaching LevelDB (whose failed open would drop the first one's lock).
  if (openDirectories.has(directory)) throw lockedError(directory);
  openDirectories.add(directory);
  try {
    if (await heldByThisProcess(directory)) throw lockedError(directory);
    const lockPath = join(directory, INSTANCE_LOCK_DIRECTORY);
    await mkdir(lockPath, { mode: 0o700 }).catch((error: NodeJS.ErrnoException) => {
      if (error.code !== 'EEXIST') throw error;
    });
    const lock = new Level<string, string>(lockPath);
    try {
      await lock.open();
    } catch (error) {
      const cause = (error as { cause?: { code?: unknown; message?: unknown } }).cause;
      if (cause?.code === 'LEVEL_LOCKED') throw lockedError(directory, await readHolder(directory), error);
      throw new CacheError(
        'CACHE_STORAGE',
        `Cannot take the lock of the cache directory ${directory}: ${String(cause?.message ?? error)}. If ${lockPath} is damaged, ` +
          'delete it (it holds no data) while no hoard process uses the directory.',
        { cause: error },
      );
    }
    instanceLocks.set(directory, lock);
    // Written whole under another name, then renamed, so that a reader never sees half of it.
    const file = join(lockPath, HOLDER_FILE);
    const temporary = `${file}.${process.pid}`;
    await writeFile(temporary, JSON.stringify({ pid: process.pid, ...holder }), { mode: 0o600 })
      .then(() => rename(temporary, file))
      .catch(() => rm(temporary, { force: true }))
      .catch(() => {
        // Without it, whoever finds the lock taken names the pid only.
      });
  } catch (error) {
    await releaseDirectory(directory);
    if (error instanceof CacheError) throw error;
    throw new CacheError(
      'CACHE_STORAGE',
      `Cannot take the lock of the cache directory ${directory}: ${error instanceof Error ? error.message : String(error)}. ` +
        'Check that the directory is readable and writable by you, or choose another one (--data-dir, HOARD_DATA_DIR).',
      { cause: error },
    );
  }
}

/**
 * Opens the LevelDB database in the existing `directory` for `holder`, holding its instance lock (see
 * {@link lockDirectory}) until {@link releaseDirectory}. Resolves to the database and the directory's real path.
 * @throws CacheError `CACHE_LOCKED` when another process or another open store in this process holds it;
 * `CACHE_CORRUPT` or `CACHE_STORAGE` (see {@link openError}) when LevelDB cannot open it.
 */
export async function openExclusive(directory: string, holder: HolderRole = { role: 'library' }): Promise<{ db: Level<Buffer, Buffer>; directory: string }> {
  const real = await realpath(directory);
  await lockDirectory(real, holder);
  const db = new Level<Buffer, Buffer>(real, { keyEncoding: 'buffer', valueEncoding: 'buffer' });
  try {
    await db.open();
  } catch (error) {
    // LevelDB's refusal is what the caller must hear; the lock goes with the process if it will not close.
    await releaseDirectory(real).catch(() => {});
    throw await openError(real, error);
  }
  return { db, directory: real };
}

/**
 * Ends this process's hold on `directory` (a real path from {@link openExclusive} or {@link lockDirectory}) once
 * its database is closed: the holder file goes, then the instance lock, then the claim in the registry.
 */
export async function releaseDirectory(directory: string): Promise<void> {
  const lock = instanceLocks.get(directory);
  instanceLocks.delete(directory);
  try {
    if (lock) {
      await unlink(join(directory, INSTANCE_LOCK_DIRECTORY, HOLDER_FILE)).catch(() => {});
      await lock.close();
    }
  } finally {
    openDirectories.delete(directory);
  }
}
