import { closeSync, constants, fstatSync, openSync, read, readSync } from 'node:fs';
import { promisify } from 'node:util';
import { join } from 'node:path';
import { CacheError } from '../src/errors.js';
import type { EncodedRecord } from '../src/store.js';
import { FILE_ITEM_NAME, type FileItem } from '../src/wire/protocol.js';

/** `read` at a position, on the thread pool. */
const readAt = promisify(read);
/** Files up to this size are read synchronously (a few page-cached system calls); larger ones on the thread pool. */
export const SYNC_READ_MAX_BYTES = 1024 * 1024;
/** The most bytes of the probe file that are read: its token is far shorter. */
const PROBE_MAX_BYTES = 256;
/** Without following a link, and without blocking: a FIFO put where a file was would otherwise hang the open. */
const READ_FLAGS = constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK;

/** Whether a file opened is this process's user's: the daemon that wrote it runs as the same user. */
function ownedHere(info: { uid: number }): boolean {
  const uid = process.getuid?.();
  return uid === undefined || info.uid === uid;
}

function corrupt(path: string, why: string, cause?: unknown): CacheError {
  return new CacheError(
    'CACHE_CORRUPT',
    `The file holding a stored value, ${path}, ${why}: something other than hoard changed the cache directory.`,
    cause === undefined ? undefined : { cause },
  );
}

/** The path of a file item's value, after checking its name. @throws CacheError `CACHE_CORRUPT` for a name no value file has. */
function pathOf(directory: string, item: FileItem): string {
  if (!FILE_ITEM_NAME.test(item.file) || !Number.isSafeInteger(item.size) || item.size < 0) {
    throw new CacheError('CACHE_CORRUPT', `The daemon named a value file that cannot be one: ${JSON.stringify(item.file)}.`);
  }
  return join(directory, item.file);
}

function openError(path: string, error: unknown): CacheError {
  const code = (error as NodeJS.ErrnoException).code;
  // ELOOP: a symbolic link where the file was (O_NOFOLLOW); ENOENT: gone.
  if (code === 'ENOENT' || code === 'ELOOP') return corrupt(path, code === 'ENOENT' ? 'is missing' : 'is a symbolic link', error);
  return new CacheError('CACHE_STORAGE', `Cannot read the value file ${path}`, { cause: error });
}

function checkOpened(path: string, info: { isFile(): boolean; size: number; uid: number }, size: number): void {
  if (!info.isFile()) throw corrupt(path, 'is not a regular file');
  if (!ownedHere(info)) throw corrupt(path, `belongs to another user (uid ${info.uid})`);
  if (info.size !== size) throw corrupt(path, `has ${info.size} bytes where its record says ${size}`);
}

function record(item: FileItem, bytes: Buffer): EncodedRecord {
  const value = { encoding: item.encoding, bytes };
  return item.expiresAtMs === undefined ? { modified: item.modified, value } : { modified: item.modified, value, expiresAtMs: item.expiresAtMs };
}

/**
 * Checks, as {@link readFileItem} does, the file a file item names without reading it: for a value too large to read
 * at grant, read when asked while the handle is held.
 * @throws CacheError as {@link readFileItem}.
 */
export function checkFileItem(directory: string, item: FileItem): string {
  const path = pathOf(directory, item);
  closeSync(openChecked(path, item.size));
  return path;
}

/**
 * The file at `path`, opened now, without following a link or blocking, and checked to be a regular file of this
 * user's of `size` bytes: its descriptor. Opened at once, so that a handle released right after the call cannot take
 * the file away before it is open.
 */
function openChecked(path: string, size: number): number {
  let fd: number;
  try {
    fd = openSync(path, READ_FLAGS);
  } catch (error) {
    throw openError(path, error);
  }
  try {
    checkOpened(path, fstatSync(fd), size);
    return fd;
  } catch (error) {
    closeSync(fd);
    throw storageError(path, error);
  }
}

function storageError(path: string, error: unknown): CacheError {
  return error instanceof CacheError ? error : new CacheError('CACHE_STORAGE', `Cannot read the value file ${path}`, { cause: error });
}

/**
 * Reads the value a file item names, in `directory` (the handshake's `blobDirectory`), as the record it stands for:
 * without following a symbolic link or blocking (a FIFO), checking that it is a regular file of this user's of the
 * item's size. Synchronously (no promise) up to {@link SYNC_READ_MAX_BYTES}; larger ones are opened at once and read on
 * the thread pool. Call it while the handle is held: after release the file may be gone.
 * @throws CacheError `CACHE_CORRUPT` when the file is missing, not a regular file, or not of the item's size;
 * `CACHE_STORAGE` when it cannot be read.
 */
export function readFileItem(directory: string, item: FileItem): EncodedRecord | Promise<EncodedRecord> {
  const path = pathOf(directory, item);
  const fd = openChecked(path, item.size);
  if (item.size > SYNC_READ_MAX_BYTES) return readLater(path, fd, item);
  try {
    const bytes = Buffer.allocUnsafeSlow(item.size);
    for (let got = 0; got < item.size; ) {
      const n = readSync(fd, bytes, got, item.size - got, got);
      if (n === 0) throw corrupt(path, `ends after ${got} of its ${item.size} bytes`);
      got += n;
    }
    return record(item, bytes);
  } catch (error) {
    throw storageError(path, error);
  } finally {
    closeSync(fd);
  }
}

async function readLater(path: string, fd: number, item: FileItem): Promise<EncodedRecord> {
  try {
    const bytes = Buffer.allocUnsafeSlow(item.size);
    for (let got = 0; got < item.size; ) {
      const { bytesRead } = await readAt(fd, bytes, got, item.size - got, got);
      if (bytesRead === 0) throw corrupt(path, `ends after ${got} of its ${item.size} bytes`);
      got += bytesRead;
    }
    return record(item, bytes);
  } catch (error) {
    throw storageError(path, error);
  } finally {
    closeSync(fd);
  }
}

/**
 * What the daemon's probe file holds, read without following a link or blocking; `undefined` when it cannot be read
 * (another mount namespace, another machine's path) or is not a regular file of this user's: the connection then
 * carries values' bytes.
 */
export function readProbe(path: string): string | undefined {
  let fd: number;
  try {
    fd = openSync(path, READ_FLAGS);
  } catch {
    return undefined;
  }
  try {
    const info = fstatSync(fd);
    if (!info.isFile() || !ownedHere(info)) return undefined;
    const bytes = Buffer.alloc(PROBE_MAX_BYTES);
    const n = readSync(fd, bytes, 0, PROBE_MAX_BYTES, 0);
    return bytes.toString('utf8', 0, n).trim();
  } catch {
    return undefined;
  } finally {
    closeSync(fd);
  }
}

/**
 * Chunked values up to this size are gathered when their handle is granted, so that `value()` works after release
 * as for any other; larger ones only when asked (`value()` or `path()`), while the handle is held.
 */
export const EAGER_GATHER_MAX_BYTES = 16 * 1024 * 1024;

/** How many chunk requests one reader keeps in flight: its credit, and so about how many chunks it holds at once. */
export const CHUNK_CREDIT = 4;

/** Reads `maxBytes` of a chunked value from `offsetBytes`: one `cache/readChunk`. */
export type ChunkReader = (offsetBytes: number, maxBytes: number) => Promise<Uint8Array>;

/**
 * Reads a chunked value of `size` bytes by ranges of `chunkBytes`, with {@link CHUNK_CREDIT} requests in flight, and
 * hands each range to `take` (in any order); a range is asked for only once a reader has taken its previous one, so
 * at most the credit's chunks are held at once, however large the value.
 * @throws CacheError `CACHE_PROTOCOL_MISMATCH` when the daemon answers a range with another length, or what `read`
 * and `take` throw.
 */
export async function pullChunks(
  read: ChunkReader,
  options: { size: number; chunkBytes: number; take(offsetBytes: number, bytes: Uint8Array): void | Promise<void> },
): Promise<void> {
  const { size, chunkBytes, take } = options;
  if (!(Number.isSafeInteger(chunkBytes) && chunkBytes >= 1)) {
    throw new CacheError('CACHE_PROTOCOL_MISMATCH', 'The daemon answered in chunks without offering a chunk size.');
  }
  let next = 0;
  let failed = false;
  const reader = async (): Promise<void> => {
    while (next < size && !failed) {
      const offset = next;
      const length = Math.min(chunkBytes, size - offset);
      next += length;
      const bytes = await read(offset, length);
      if (bytes.byteLength !== length) {
        throw new CacheError('CACHE_PROTOCOL_MISMATCH', `The daemon answered ${bytes.byteLength} bytes for a chunk of ${length} at ${offset}.`);
      }
      await take(offset, bytes);
    }
  };
  // Every reader ends before this settles, so that nothing is taken after a failure has been reported.
  const ended = await Promise.allSettled(
    Array.from({ length: Math.min(CHUNK_CREDIT, Math.ceil(size / chunkBytes)) }, () =>
      reader().catch((error: unknown) => {
        failed = true;
        throw error;
      }),
    ),
  );
  const failure = ended.find((outcome): outcome is PromiseRejectedResult => outcome.status === 'rejected');
  if (failure) throw failure.reason;
}

/** A chunked value's bytes, gathered into one buffer allocated once. */
export async function gatherChunks(read: ChunkReader, options: { size: number; chunkBytes: number }): Promise<Buffer> {
  const bytes = Buffer.allocUnsafeSlow(options.size);
  await pullChunks(read, { ...options, take: (offset, chunk) => void bytes.set(chunk, offset) });
  return bytes;
}
