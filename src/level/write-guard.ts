/**
 * Keeping a LevelDB store from acknowledging a write that the next open would not find.
 *
 * Why: when a write fails (a full disk, say), LevelDB 1.20 goes on taking writes, but its log may now end in a
 * half-written record, and the next open drops everything after it ("dropping … bytes; Corruption: checksum
 * mismatch"): every write acknowledged since would be lost. And when the data directory is deleted or replaced
 * under an open database, LevelDB goes on writing into files that no later open sees. So, after a failed write,
 * writes are refused until the database has been reopened (which replays the log up to the damage and starts a new
 * one), and a write that ends after another failed is not acknowledged (it may follow the damage in the log); and a
 * write counts only while the directory is still the one opened, else the store is lost for good.
 */
import { statSync } from 'node:fs';
import { open, readdir, rm, stat, statfs } from 'node:fs/promises';
import { join } from 'node:path';
import type { Level } from 'level';
import { CacheError, isCacheError, storageError } from '../errors.js';

/** How long after a failed attempt to reopen the database the next write may try again. */
const REOPEN_RETRY_MS = 1000;
/** The room a reopen needs besides a copy of the database's logs and manifest: a new log, manifest and info log. */
const REOPEN_SPARE_BYTES = 256 * 1024;

/** What tells a directory from another one made at the same path. */
export interface DirectoryIdentity {
  dev: number;
  ino: number;
}

/** The identity of `directory` now. */
export async function directoryIdentity(directory: string): Promise<DirectoryIdentity> {
  const { dev, ino } = await stat(directory);
  return { dev, ino };
}

export interface WriteGuardOptions {
  /** The open database, which the guard closes and opens again after a failed write. */
  db: Level<Buffer, Buffer>;
  /** Its directory (a real path), and the identity it had when opened. */
  directory: string;
  identity: DirectoryIdentity;
  /** Where the guard says why writes are refused and when they resume. */
  log: (line: string) => void;
  /** Called once when the directory is lost for good. */
  onLost?: (error: CacheError) => void;
  /** Runs after a reopen, which may have replayed a write that failed: the owner forgets what it read before. */
  reopened: () => void;
  /** Resolves once the other users of the database (a sweep of files, say) are done, before it is closed. */
  idle: () => Promise<unknown>;
}

/**
 * Refuses writes after a failed one until the database is reopened, which the next write tries once the disk has
 * room (or the next read, when a failed reopen left the database closed); fails every call once the directory is lost
 * (deleted, replaced, or taken by another process meanwhile).
 */
export class WriteGuard {
  readonly #options: WriteGuardOptions;
  /** Why writes are refused: a write failed, and the database has not been reopened since. */
  #refusal: CacheError | undefined;
  /** Why every call fails. */
  #lost: CacheError | undefined;
  /** How many writes have failed so far. */
  #failures = 0;
  /** The reopen under way, which writes wait for. */
  #reopening: Promise<void> | undefined;
  /** Settles once the database, closed to be reopened, is open again (or failed to open): reads wait for it. */
  #closedForReopen: Promise<void> | undefined;
  /** When the next reopen may be tried, after one failed. */
  #retryAtMs = 0;
  /** When a read may next try to reopen a database that a failed reopen left closed. */
  #readRetryAtMs = 0;
  /** Whether a failed reopen was logged since writes were refused: once is enough. */
  #reopenFailureLogged = false;
  /** The writes and clears under way, which a reopen waits for. */
  readonly #inFlight = new Set<Promise<unknown>>();

  constructor(options: WriteGuardOptions) {
    this.#options = options;
  }

  /** Whether a write must await {@link writable} first: writes are refused, or being resumed, or the store is lost. */
  get blocked(): boolean {
    return this.#refusal !== undefined || this.#lost !== undefined || this.#reopening !== undefined;
  }

  /** @throws CacheError `CACHE_DATA_DIRECTORY_LOST` once the directory is lost. */
  assertNotLost(): void {
    if (this.#lost) throw this.#lost;
  }

  /**
   * While the database is closed to be reopened, a promise that settles once reads can go on; else `undefined`. A
   * database left closed by a reopen that failed (an open that failed after the close) is reopened by a read too, at
   * most once per {@link REOPEN_RETRY_MS} of reads: the read waits for that attempt, and fails at once in between.
   */
  readsPaused(): Promise<void> | undefined {
    if (this.#closedForReopen) return this.#closedForReopen;
    if (this.#options.db.status !== 'closed' || !this.#refusal || this.#lost) return undefined;
    if (!this.#reopening) {
      if (Date.now() < Math.max(this.#readRetryAtMs, this.#retryAtMs)) return undefined;
      this.#readRetryAtMs = Date.now() + REOPEN_RETRY_MS;
      this.#reopening = this.#reopen().finally(() => (this.#reopening = undefined));
    }
    // Its outcome is for the writes that wait for it; the read then reads, or fails saying why.
    return this.#reopening.then(
      () => {},
      () => {},
    );
  }

  /** The error for a failed read: while a reopen has failed, the database is closed, and the message says why. */
  readError(error: unknown): CacheError {
    if (this.#options.db.status !== 'open' && this.#refusal) {
      const why = this.#closedForReopen ? 'it is being reopened' : 'it could not be reopened';
      return new CacheError('CACHE_STORAGE', `${this.#refusal.message} Reads fail too meanwhile: ${why}.`, { cause: error });
    }
    return storageError('Cannot read from the cache database', error);
  }

  /**
   * Resolves once writes may go on: at once, or once a failed write's database has been reopened.
   * @throws CacheError `CACHE_STORAGE` while writes are refused, `CACHE_DATA_DIRECTORY_LOST`.
   */
  async writable(): Promise<void> {
    if (this.#lost) throw this.#lost;
    if (this.#refusal && !this.#reopening) this.#reopening = this.#reopen().finally(() => (this.#reopening = undefined));
    if (this.#reopening) await this.#reopening;
  }

  /**
   * Runs one LevelDB write. It counts as written only if no other write failed while it ran (it may then follow
   * the damaged record in the log) and the directory is still the one opened.
   * @throws CacheError `CACHE_STORAGE` when it failed or writes are refused, `CACHE_DATA_DIRECTORY_LOST`.
   */
  async commit(write: () => Promise<void>): Promise<void> {
    if (this.#lost) throw this.#lost;
    if (this.#refusal) throw this.#refusal;
    const failures = this.#failures;
    const writing = write();
    this.#inFlight.add(writing);
    try {
      await writing;
    } catch (error) {
      throw this.#failed(error);
    } finally {
      this.#inFlight.delete(writing);
    }
    if (this.#failures !== failures) throw this.#lost ?? this.#refusal ?? storageError('Cannot write to the cache database', 'another write failed');
    this.checkDirectory();
  }

  /** Runs `operation` (a clear: an iteration and several commits), which a reopen waits for. */
  async track<T>(operation: Promise<T>): Promise<T> {
    this.#inFlight.add(operation);
    try {
      return await operation;
    } finally {
      this.#inFlight.delete(operation);
    }
  }

  /**
   * Throws, and from then on fails every call, when the directory was deleted or replaced since it was opened: a
   * write there would be lost, and nothing makes the directory anew. A stat: microseconds.
   * @throws CacheError `CACHE_DATA_DIRECTORY_LOST`.
   */
  checkDirectory(): void {
    if (this.#lost) throw this.#lost;
    const { directory, identity } = this.#options;
    let now: DirectoryIdentity | undefined;
    try {
      now = statSync(directory, { throwIfNoEntry: false });
    } catch {
      now = undefined;
    }
    if (now?.dev === identity.dev && now.ino === identity.ino) return;
    throw this.#lose(`the cache directory ${directory} was ${now ? 'replaced' : 'deleted'} while hoard had it open`);
  }

  /** Records a failed write: from now on writes are refused until the database is reopened. Returns the write's error. */
  #failed(cause: unknown): CacheError {
    this.#failures++;
    const error = storageError('Cannot write to the cache database', cause);
    // A write fails when its directory is gone: then the store is lost, rather than waiting for room.
    try {
      this.checkDirectory();
    } catch (lost) {
      return lost as CacheError;
    }
    if (!this.#refusal) {
      const { directory, log } = this.#options;
      const reason = cause instanceof Error ? cause.message : String(cause);
      this.#refusal = new CacheError(
        'CACHE_STORAGE',
        `Writes to the cache database in ${directory} are refused since one failed (${reason}); they resume once it ` +
          'has been reopened, which the next write tries when the disk has room.',
        { cause },
      );
      this.#retryAtMs = 0;
      this.#reopenFailureLogged = false;
      log(`writes refused: a write to the cache database in ${directory} failed (${reason}); reads go on, writes resume once the disk has room`);
    }
    return error;
  }

  /**
   * Reopens the database after a failed write, once the disk has room: the open drops the log's damaged tail and
   * starts a new log. A write tries it; after an attempt that failed, the next waits {@link REOPEN_RETRY_MS}.
   */
  async #reopen(): Promise<void> {
    const refusal = this.#refusal!;
    const { db, directory, log } = this.#options;
    this.checkDirectory();
    const neededBytes = await this.#roomToReopen();
    if (neededBytes === undefined || Date.now() < this.#retryAtMs) throw refusal;
    if (!(await this.#probe(neededBytes))) {
      this.#retryAtMs = Date.now() + REOPEN_RETRY_MS;
      throw refusal;
    }
    // What is still running goes first; a write or clear that starts now sees the refusal.
    await Promise.allSettled([this.#options.idle(), ...this.#inFlight]);
    this.checkDirectory();
    let reopened!: () => void;
    this.#closedForReopen = new Promise((resolve) => (reopened = resolve));
    try {
      if (db.status === 'open') await db.close();
      // Never created anew: a directory deleted meanwhile stays deleted. Another process may have taken it meanwhile.
      await db.open({ createIfMissing: false });
    } catch (error) {
      this.#retryAtMs = Date.now() + REOPEN_RETRY_MS;
      const cause = (error as { cause?: { code?: unknown } }).cause;
      if (cause?.code === 'LEVEL_LOCKED') throw this.#lose(`another process took the cache directory ${directory} while hoard reopened it`, error);
      this.checkDirectory();
      if (!this.#reopenFailureLogged) log(`reopening the cache database in ${directory} failed (${String(cause ?? error)}); later writes try again`);
      this.#reopenFailureLogged = true;
      throw refusal;
    } finally {
      this.#closedForReopen = undefined;
      reopened();
    }
    this.#options.reopened();
    this.#refusal = undefined;
    log(`writes resumed: the cache database in ${directory} was reopened`);
  }

  /**
   * The bytes a reopen needs (a copy of the logs and manifest, and new ones) if the file system says it has them,
   * else `undefined`: a cheap look, which every refused write takes.
   */
  async #roomToReopen(): Promise<number | undefined> {
    const { directory } = this.#options;
    let neededBytes = REOPEN_SPARE_BYTES;
    try {
      for (const name of await readdir(directory)) {
        if (name.endsWith('.log') || name.startsWith('MANIFEST-')) neededBytes += (await stat(join(directory, name))).size;
      }
      const { bavail, bsize } = await statfs(directory);
      return bavail * bsize >= neededBytes ? neededBytes : undefined;
    } catch {
      return undefined;
    }
  }

  /** Whether a file of `bytes` can be written in the directory: a quota or a read-only disk shows only so. */
  async #probe(bytes: number): Promise<boolean> {
    // One name, so that a probe left by a crash is reused rather than piling up.
    const probe = join(this.#options.directory, 'hoard-probe.tmp');
    try {
      const file = await open(probe, 'w', 0o600);
      try {
        const zeros = Buffer.alloc(64 * 1024);
        for (let at = 0; at < bytes; at += zeros.length) await file.write(zeros, 0, Math.min(zeros.length, bytes - at));
        await file.sync();
      } finally {
        await file.close().finally(() => rm(probe, { force: true }));
      }
      return true;
    } catch {
      return false;
    }
  }

  /** Marks the store as lost for good, once, and tells its owner. */
  #lose(why: string, cause?: unknown): CacheError {
    if (!this.#lost) {
      this.#lost = new CacheError('CACHE_DATA_DIRECTORY_LOST', `${why[0]!.toUpperCase()}${why.slice(1)}: nothing more is written there.`, { cause });
      this.#options.log(`${why}: refusing every request, and not making the directory again`);
      this.#options.onLost?.(this.#lost);
    }
    return this.#lost;
  }

  /** Resolves once a reopen under way has ended, however it ended. */
  async settled(): Promise<void> {
    await this.#reopening?.catch(() => {});
  }
}

/** The error a batch's callers get: the guard's own, or the storage failure. */
export function writeError(error: unknown): CacheError {
  return isCacheError(error) ? error : storageError('Cannot write to the cache database', error);
}
