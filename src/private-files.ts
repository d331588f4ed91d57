import { lstat, mkdtemp, open, readdir, rm, unlink, writeFile } from 'node:fs/promises';
import { readFileSync, readlinkSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CacheError, storageError } from './errors.js';

/**
 * This process's private directory of files that `item.path()` writes (values not kept in files of their own):
 * `<tmpdir>/hoard-<uid>-<pidNamespace>-<pid>-<startTime>-<random>`, mode 0700, made at first use, removed at exit;
 * one left by a process that died is removed by the next process of the same PID namespace that makes its own (a
 * pid means nothing in another namespace, such as a container sharing /tmp, and a reused pid has another start time).
 */
let directory: Promise<string> | undefined;
let counter = 0;

function prefix(): string {
  return `hoard-${process.getuid?.() ?? 'user'}-`;
}

/** The inode of this process's PID namespace, or `x` where /proc does not tell. */
function pidNamespace(): string {
  try {
    return /\[(\d+)\]/.exec(readlinkSync('/proc/self/ns/pid'))?.[1] ?? 'x';
  } catch {
    return 'x';
  }
}

/** When process `pid` started, in clock ticks since boot (field 22 of /proc/<pid>/stat), or `0` where unknown. */
function startTime(pid: number): string {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Fields after the command name, which may hold spaces and ')': state is field 3, start time field 22.
    return /^\d+$/.exec(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19] ?? '')?.[0] ?? '0';
  } catch {
    return '0';
  }
}

/** Whether process `pid` runs (one of another user's counts: it cannot be signalled, but it exists). */
export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Removes the private directories of this user's processes of this PID namespace that are gone (their pid not
 * running, or running a process started at another time); those of other namespaces are left alone.
 */
async function removeDeadOnes(): Promise<void> {
  const own = `${prefix()}${pidNamespace()}-`;
  for (const name of await readdir(tmpdir()).catch(() => [])) {
    if (!name.startsWith(own)) continue;
    const [, pidText, started] = /^(\d+)-(\d+)-/.exec(name.slice(own.length)) ?? [];
    const pid = Number(pidText);
    if (!Number.isSafeInteger(pid) || started === undefined) continue;
    if (isAlive(pid) && (started === '0' || [started, '0'].includes(startTime(pid)))) continue;
    const path = join(tmpdir(), name);
    const info = await lstat(path).catch(() => undefined);
    if (info?.isDirectory() && info.uid === process.getuid?.()) await rm(path, { recursive: true, force: true }).catch(() => {});
  }
}

async function makeDirectory(): Promise<string> {
  await removeDeadOnes();
  // mkdtemp makes it 0700.
  const made = await mkdtemp(join(tmpdir(), `${prefix()}${pidNamespace()}-${process.pid}-${startTime(process.pid)}-`));
  process.once('exit', () => rmSync(made, { recursive: true, force: true }));
  return made;
}

/** This process's private directory (0700), made at the first call. */
export function privateDirectory(): Promise<string> {
  return (directory ??= makeDirectory().catch((error: unknown) => {
    directory = undefined;
    throw error;
  }));
}

/**
 * Writes `bytes` to a new file of this process's private directory, mode 0400, and returns its path.
 * @throws CacheError `CACHE_STORAGE` when it cannot.
 */
export async function writePrivateFile(bytes: Uint8Array): Promise<string> {
  try {
    const made = await privateDirectory();
    const path = join(made, `v${(counter++).toString(36)}`);
    await writeFile(path, bytes, { mode: 0o400, flag: 'wx' });
    return path;
  } catch (error) {
    throw storageError('Cannot write the file of a value for item.path()', error);
  }
}

/** Writes a private file piece by piece: `write` puts bytes at a position; the file is complete when it resolves. */
export type PrivateFileFill = (write: (bytes: Uint8Array, positionBytes: number) => Promise<void>) => Promise<void>;

/**
 * Like {@link writePrivateFile}, but the bytes come from `fill`, a piece at a time, so that a value larger than memory
 * can be written; a file whose fill fails is removed.
 * @throws CacheError `CACHE_STORAGE` when it cannot write, or what `fill` throws.
 */
export async function writePrivateFileFrom(fill: PrivateFileFill): Promise<string> {
  let path: string;
  let file;
  try {
    const made = await (directory ??= makeDirectory().catch((error: unknown) => {
      directory = undefined;
      throw error;
    }));
    path = join(made, `v${(counter++).toString(36)}`);
    file = await open(path, 'wx', 0o400);
  } catch (error) {
    throw storageError('Cannot write the file of a value for item.path()', error);
  }
  try {
    await fill(async (bytes, positionBytes) => {
      for (let done = 0; done < bytes.byteLength; ) {
        const { bytesWritten } = await file.write(bytes, done, bytes.byteLength - done, positionBytes + done).catch((error: unknown) => {
          throw storageError('Cannot write the file of a value for item.path()', error);
        });
        done += bytesWritten;
      }
    });
    await file.close();
    return path;
  } catch (error) {
    await file.close().catch(() => {});
    await removePrivateFile(path);
    throw error;
  }
}

/** Removes a file {@link writePrivateFile} made; one already gone is no error. */
export async function removePrivateFile(path: string): Promise<void> {
  await unlink(path).catch(() => {});
}

function notHeld(): CacheError {
  return new CacheError('CACHE_LOCK_NOT_HELD', "This item's handle was released: its path is no longer valid.");
}

function lostHandle(): CacheError {
  return new CacheError('CACHE_LOCK_NOT_HELD', "The connection that held this item's handle was lost, or its cache closed: its path is no longer valid.");
}

/** What a release with no files to remove returns: one settled promise for all. */
const NOTHING_TO_REMOVE = Promise.resolve();

/**
 * The paths that one handle's items gave (`item.path()`): valid until the handle is released, or `lost()` says that
 * its connection was lost or its owner closed (the files may then go at any moment); the files written for them are
 * removed at release, and a file whose write ends after that is removed at once.
 */
export class HandleFiles {
  #released = false;
  /** The files written for the paths, made at the first (most handles never write one). */
  #made: Set<string> | undefined;
  /** The owner's handles that have files, which it releases when it closes. */
  readonly #live: Set<HandleFiles> | undefined;
  readonly #lost: (() => boolean) | undefined;

  constructor(live?: Set<HandleFiles>, options: { lost?: () => boolean } = {}) {
    this.#live = live;
    this.#lost = options.lost;
  }

  /** Why the paths (and a value read while the handle is held) are no longer valid, or `undefined` while they are. */
  ended(): CacheError | undefined {
    return this.#ended();
  }

  #ended(): CacheError | undefined {
    if (this.#released) return notHeld();
    return this.#lost?.() ? lostHandle() : undefined;
  }

  /**
   * An item's `path()`: the path `source` gives (a file of the store's, kept while the handle is held), or a private
   * file (0400) of the bytes it gives (or that its fill writes), written at the first call.
   */
  itemPath(source: () => string | Uint8Array | PrivateFileFill): () => Promise<string> {
    let path: Promise<string> | undefined;
    return () => {
      const ended = this.#ended();
      if (ended) return Promise.reject(ended);
      path ??= (async () => {
        const given = source();
        if (typeof given === 'string') return given;
        const written = typeof given === 'function' ? await writePrivateFileFrom(given) : await writePrivateFile(given);
        const endedMeanwhile = this.#ended();
        if (endedMeanwhile) {
          await removePrivateFile(written);
          throw endedMeanwhile;
        }
        (this.#made ??= new Set()).add(written);
        this.#live?.add(this);
        return written;
      })();
      return path;
    };
  }

  /** Ends the paths at once; resolves once the files written for them are removed. */
  release(): Promise<void> {
    this.#released = true;
    if (this.#made === undefined || this.#made.size === 0) return NOTHING_TO_REMOVE;
    this.#live?.delete(this);
    const made = [...this.#made];
    this.#made.clear();
    return Promise.all(made.map(removePrivateFile)).then(() => {});
  }
}

/** Ends the paths of every handle in `live` (an owner that closes), removing their files. */
export async function releaseAll(live: Set<HandleFiles>): Promise<void> {
  await Promise.all([...live].map((files) => files.release()));
}
