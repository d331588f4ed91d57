import { flagOption } from '../src/flag-option.js';
import type { CacheItem, ExpiryOptions, GetHandle, GetSetHandle, MissedGetSetHandle, ReservedFile } from '../src/cache.js';
import { type CacheBackend, MISSED_GETSET } from '../src/cache-backend.js';
import { checkExpiry, RootCacheView } from '../src/cache-view.js';
import { CacheError, isCacheError } from '../src/errors.js';
import type { ValueAdapter } from '../src/local-backend.js';
import type { Scope } from '../src/scope-path.js';
import type { EncodedRecord, EncodedValue, StoreListing, VerifyReport } from '../src/store.js';
import {
  Clear,
  Delete,
  DiscardFile,
  Gc,
  type GcResult,
  Get,
  type GetResult,
  GetSet,
  HandleSet,
  type ChunkedItem,
  type FileItem,
  isChunkedItem,
  HandleSetFile,
  isFileItem,
  List,
  type LockInfo,
  Locks,
  ReadChunk,
  Release,
  ReserveFile,
  Set as SetItem,
  SetFile,
  Status,
  type StatusResult,
  Verify,
  type WireItem,
  WriteChunk,
  CHUNK_WRITES_PER_CONNECTION,
} from '../src/wire/protocol.js';
import { type Channel, closedError } from './channel.js';
import { referenceDirectoryOf } from './open-channel.js';
import { CHUNK_CREDIT, type ChunkReader, checkFileItem, EAGER_GATHER_MAX_BYTES, gatherChunks, pullChunks, readFileItem } from './value-files.js';
import { read } from 'node:fs';
import { open as openFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { HandleFiles, releaseAll } from '../src/private-files.js';
import { fsCall } from '../src/fs-call.js';
import { PrivateReservations, ReservedFiles } from '../src/reserved-files.js';
import { CallOrder } from './call-order.js';
import type { OpenReservation } from '../src/temp-files.js';

/**
 * A reservation `reserveFile` handed out: the daemon's, by number on the connection that made it (a client that reads
 * the daemon's files), or one in this process's private directory (`connection` null), sent as bytes at commit.
 */
interface Reservation {
  readonly connection: Channel | null;
  readonly reservation: number;
}

function lostReservation(): CacheError {
  return new CacheError('CACHE_FILE_REFUSED', 'The connection that reserved this file was lost, and the daemon removed the file with it: reserve another.');
}

/** The files that records read by reference came from: `item.path()` gives them while the handle is held. */
const filePaths = new WeakMap<EncodedRecord, string>();

/** A chunked item too large to gather at grant: read when asked, while its handle is held. */
interface LaterRecord {
  readonly chunked: ChunkedItem;
  readonly read: ChunkReader;
  readonly chunkBytes: number;
}

/** A value answered by reference too large to read at grant: read from its file when asked, while its handle is held. */
interface LaterFileRecord {
  readonly byReference: FileItem;
  readonly directory: string;
  readonly path: string;
}

/** A handle's item as the client keeps it: its bytes, or the way to read them (in chunks, or from its file). */
type HeldRecord = EncodedRecord | LaterRecord | LaterFileRecord;

function isLater(record: HeldRecord): record is LaterRecord {
  return 'chunked' in record;
}

function isLaterFile(record: HeldRecord): record is LaterFileRecord {
  return 'byReference' in record;
}

/** The record a chunked item stands for, with its bytes. */
function chunkedRecord(item: ChunkedItem, bytes: Uint8Array): EncodedRecord {
  const value = { encoding: item.encoding, bytes };
  return item.expiresAtMs === undefined ? { modified: item.modified, value } : { modified: item.modified, value, expiresAtMs: item.expiresAtMs };
}

const MiB = 1024 * 1024;

/** Slots for a connection's chunk writes, shared by all its uploads, so that together they stay within the daemon's limit. */
class ChunkWrites {
  #free = CHUNK_WRITES_PER_CONNECTION;
  readonly #waiting: (() => void)[] = [];

  take(): Promise<void> | void {
    if (this.#free > 0) {
      this.#free--;
      return;
    }
    return new Promise((resolve) => this.#waiting.push(resolve));
  }

  give(): void {
    const next = this.#waiting.shift();
    if (next) next();
    else this.#free++;
  }
}

const chunkWrites = new WeakMap<Channel, ChunkWrites>();

function chunkWritesOf(connection: Channel): ChunkWrites {
  let slots = chunkWrites.get(connection);
  if (!slots) chunkWrites.set(connection, (slots = new ChunkWrites()));
  return slots;
}

/** A {@link CacheBackend} that forwards every call to the daemon; the codec runs here, in the client. */
export class RemoteBackend<T> implements CacheBackend<T> {
  readonly #adapter: ValueAdapter<T, EncodedValue>;
  readonly #open: () => Promise<Channel>;
  #connection: Channel | undefined;
  #connecting: Promise<Channel> | undefined;
  #closed = false;
  /** Handles whose items' paths have files of their own, removed at close if not released by then. */
  readonly #handleFiles = new Set<HandleFiles>();
  /** The reservations `reserveFile` handed out, by path. */
  readonly #reserved = new ReservedFiles<Reservation>((entry) => this.#discard(entry));
  /** Reservations in this process's private directory, for a connection that does not read the daemon's files. */
  readonly #private = new PrivateReservations();
  /** Calls kept behind a write by reservation of their item, so that the daemon gets them in call order. */
  readonly #order = new CallOrder();

  constructor(adapter: ValueAdapter<T, EncodedValue>, open: () => Promise<Channel>, first?: Channel) {
    this.#adapter = adapter;
    this.#open = open;
    this.#connection = first;
  }

  /** The live connection, reconnecting (and starting the daemon if need be) after a loss. */
  connection(): Promise<Channel> {
    if (this.#closed) return Promise.reject(closedError());
    const current = this.#connection;
    if (current && !current.lost) return Promise.resolve(current);
    return this.#reconnect();
  }

  async #reconnect(): Promise<Channel> {
    this.#connecting ??= this.#open().finally(() => (this.#connecting = undefined));
    const connection = await this.#connecting;
    if (this.#closed) {
      await connection.close();
      throw closedError();
    }
    return (this.#connection = connection);
  }

  #item(record: HeldRecord | null, files: HandleFiles): CacheItem<T> | null {
    if (!record) return null;
    const adapter = this.#adapter;
    if (isLater(record)) {
      const { chunked, read, chunkBytes } = record;
      const { size, encoding } = chunked;
      // Read in chunks while the handle is held: into one buffer for the value, to a private file for a path.
      return this.#readWhenAsked(chunked, files, async () => ({ encoding, bytes: await gatherChunks(read, { size, chunkBytes }) }), () => (write) =>
        pullChunks(read, { size, chunkBytes, take: (offset, bytes) => write(bytes, offset) }),
      );
    }
    if (isLaterFile(record)) {
      const { byReference: item, directory, path } = record;
      // Read from the daemon's file while the handle is held; its path is that file, never copied.
      return this.#readWhenAsked(item, files, async () => (await readFileItem(directory, item)).value, () => path);
    }
    // The wire carries `expires` in seconds, as `expiresAtMs / 1000`; `* 1000` then `/ 1000` gives it back exactly.
    const expires = record.expiresAtMs === undefined ? null : record.expiresAtMs / 1000;
    // A value read by reference is its daemon's file (kept while the handle is held); any other is written for it.
    const path = files.itemPath(() => filePaths.get(record) ?? record.value.bytes);
    return { modified: record.modified, expires, value: async () => adapter.decode(record.value), path };
  }

  /** An item too large to read at grant: `read` when its value is asked for while the handle is held. */
  #readWhenAsked(
    wire: { readonly modified: number; readonly expiresAtMs?: number },
    files: HandleFiles,
    read: () => Promise<EncodedValue>,
    path: Parameters<HandleFiles['itemPath']>[0],
  ): CacheItem<T> {
    return {
      modified: wire.modified,
      expires: wire.expiresAtMs === undefined ? null : wire.expiresAtMs / 1000,
      value: async () => {
        const ended = files.ended();
        if (ended) throw ended;
        return this.#adapter.decode(await read());
      },
      path: files.itemPath(path),
    };
  }

  /**
   * The records of a handle's items, reading those answered by reference from their files now, while the handle holds
   * them (after release a file may be gone); a failed read releases the handle, except that with `corruptIsMiss`
   * (getset) a damaged or missing file is a miss, as it is for a value the daemon reads itself.
   */
  #records(
    connection: Channel,
    handle: number,
    items: readonly (WireItem | null)[],
    options: { corruptIsMiss: boolean },
  ): (HeldRecord | null)[] | Promise<(HeldRecord | null)[]> {
    if (!items.some((item) => item !== null && (isFileItem(item) || isChunkedItem(item)))) return items as (EncodedRecord | null)[];
    const release = (error: unknown): never => {
      connection.notify(Release, { handle });
      throw error;
    };
    try {
      const directory = referenceDirectoryOf(connection);
      const miss = (error: unknown): null => {
        if (options.corruptIsMiss && error instanceof CacheError && error.code === 'CACHE_CORRUPT') return null;
        throw error;
      };
      const read: (HeldRecord | null | Promise<HeldRecord | null>)[] = items.map((item, index) => {
        if (item !== null && isChunkedItem(item)) {
          const chunked = this.#chunked(connection, handle, item, { stale: index === 1 });
          return chunked instanceof Promise ? chunked.catch(miss) : chunked;
        }
        if (item === null || !isFileItem(item)) return item;
        if (directory === undefined) throw new CacheError('CACHE_PROTOCOL_MISMATCH', 'The daemon answered by reference on a connection that did not enable references.');
        // As a chunked value: over the eager limit, checked now and read when asked, so that a path costs no read.
        if (item.size > EAGER_GATHER_MAX_BYTES) {
          try {
            return { byReference: item, directory, path: checkFileItem(directory, item) };
          } catch (error) {
            return miss(error);
          }
        }
        let read;
        try {
          read = readFileItem(directory, item);
        } catch (error) {
          return miss(error);
        }
        const path = join(directory, item.file);
        if (read instanceof Promise) return read.then((record) => (filePaths.set(record, path), record), miss);
        filePaths.set(read, path);
        return read;
      });
      if (!read.some((item) => item instanceof Promise)) return read as (HeldRecord | null)[];
      return Promise.all(read.map(async (item) => item)).catch(release);
    } catch (error) {
      return release(error);
    }
  }

  /**
   * A chunked item of handle `handle`'s answer: gathered now (under the lock, so that `value()` works after release)
   * up to {@link EAGER_GATHER_MAX_BYTES}, else read when asked while the handle is held.
   */
  #chunked(connection: Channel, handle: number, item: ChunkedItem, options: { stale: boolean }): HeldRecord | Promise<HeldRecord> {
    const chunkBytes = connection.info.capabilities.chunks?.chunkMaxBytes ?? 0;
    const { stale } = options;
    const read: ChunkReader = (offsetBytes, maxBytes) => connection.request(ReadChunk, { handle, stale, offsetBytes, maxBytes });
    if (item.size > EAGER_GATHER_MAX_BYTES) return { chunked: item, read, chunkBytes };
    return gatherChunks(read, { size: item.size, chunkBytes }).then((bytes) => chunkedRecord(item, bytes));
  }

  /** Releases a handle at the daemon once, unless its connection is gone (which released it already). */
  #releaser(connection: Channel, handle: number): () => Promise<void> {
    let released = false;
    return async () => {
      if (released) return;
      released = true;
      connection.notify(Release, { handle });
    };
  }

  get(scope: Scope, id: string, options: { signal?: AbortSignal | undefined; wait?: boolean }): Promise<GetHandle<T> | null> {
    const current = this.#connection;
    if (this.#closed || !current || current.lost) {
      return this.connection().then((connection) => (this.#waitsBehind(scope, id) ? this.#laterGet(scope, id, options) : this.#get(connection, scope, id, options)));
    }
    // Sent one microtask from now, as the other calls are (after their `await` of the connection), so that calls
    // reach the daemon in the order they were made; but settled from the answer directly, without promises between.
    return new Promise((resolve, reject) => {
      queueMicrotask(() => {
        if (this.#waitsBehind(scope, id)) this.#laterGet(scope, id, options).then(resolve, reject);
        else if (this.#closed || current.lost) this.connection().then((connection) => this.#get(connection, scope, id, options)).then(resolve, reject);
        else this.#sendGet(current, scope, id, options, resolve, reject);
      });
    });
  }

  #get(connection: Channel, scope: Scope, id: string, options: { signal?: AbortSignal | undefined; wait?: boolean }): Promise<GetHandle<T> | null> {
    return new Promise((resolve, reject) => this.#sendGet(connection, scope, id, options, resolve, reject));
  }

  /**
   * Whether a call on the item (on the scope, without `id`) must wait for earlier calls that have not reached the
   * daemon yet ({@link CallOrder}); else it goes at once, as it would with none in flight.
   */
  #waitsBehind(scope: Scope, id?: string): boolean {
    return this.#order.size !== 0 && this.#order.before(scope.prefix, id) !== undefined;
  }

  /**
   * A get sent after the calls on its item that it must follow ({@link CallOrder}); with `wait: false` behind a write
   * of the item that has not reached the daemon, none at once: that is a writer waiting.
   */
  #laterGet(scope: Scope, id: string, options: { signal?: AbortSignal | undefined; wait?: boolean }): Promise<GetHandle<T> | null> {
    if (options.wait === false) {
      // Behind reads only, it needs no place in the order (reads share the item): sent at once, it never waits for
      // what holds up a read ahead of it.
      if (this.#order.writesBefore(scope.prefix, id)) return Promise.resolve(null);
      return this.connection().then((connection) => this.#get(connection, scope, id, options));
    }
    return this.#order.run(scope.prefix, id, () => this.connection().then((connection) => this.#get(connection, scope, id, options)), {
      signal: options.signal,
      read: true,
    });
  }

  /** Sends a get, and settles with its handle (or `null`) as soon as the answer is read. */
  #sendGet(
    connection: Channel,
    scope: Scope,
    id: string,
    options: { signal?: AbortSignal | undefined; wait?: boolean },
    resolve: (handle: GetHandle<T> | null | Promise<GetHandle<T>>) => void,
    reject: (error: unknown) => void,
  ): void {
    const { signal } = options;
    // Settled two microtasks after the answer, as a set's or a delete's promise is after its own (their `await`s), so
    // that calls answered in one read settle in the order the daemon answered them.
    const settle = (result: GetResult): void => {
      try {
        resolve(this.#granted(connection, result));
      } catch (error) {
        reject(error);
      }
    };
    const granted = (result: GetResult): void => queueMicrotask(() => queueMicrotask(() => settle(result)));
    try {
      connection.call(
        Get,
        { scope: scope.path, id, wait: options.wait !== false },
        signal
          ? {
              signal,
              abandoned: (late) => {
                if (late.handle !== null) connection.notify(Release, { handle: late.handle });
              },
            }
          : undefined,
        granted,
        reject,
      );
    } catch (error) {
      reject(error);
    }
  }

  /** The handle of a granted get (reading a value answered by reference first, while the handle holds it), or `null`. */
  #granted(connection: Channel, result: GetResult): GetHandle<T> | null | Promise<GetHandle<T>> {
    if (result.handle === null) return null;
    const handle = result.handle;
    const record = result.item;
    if (record === null || !(isFileItem(record) || isChunkedItem(record))) return this.#getHandle(connection, handle, record);
    const records = this.#records(connection, handle, [record], { corruptIsMiss: false });
    return records instanceof Promise ? records.then((read) => this.#getHandle(connection, handle, read[0]!)) : this.#getHandle(connection, handle, records[0]!);
  }

  #getHandle(connection: Channel, handle: number, record: HeldRecord | null): GetHandle<T> {
    const files = new HandleFiles(this.#handleFiles, { lost: () => connection.lost || this.#closed });
    let released = false;
    // Not async: a release is a notification, and the caller's `await` of a settled promise is its only hop.
    const release = (): Promise<void> => {
      const removed = files.release();
      if (released) return removed;
      released = true;
      try {
        connection.notify(Release, { handle });
      } catch (error) {
        return Promise.reject(error);
      }
      return removed;
    };
    return { item: this.#item(record, files), release, [Symbol.asyncDispose]: release };
  }

  async getset(
    scope: Scope,
    id: string,
    options: { wait: boolean; signal?: AbortSignal | undefined },
  ): Promise<GetSetHandle<T> | MissedGetSetHandle> {
    const connection = await this.connection();
    if (!this.#waitsBehind(scope, id)) return this.#getset(connection, scope, id, options);
    // An earlier call on the item that has not reached the daemon is a writer waiting, or a reader that will hold the
    // shared lock this one's exclusive lock needs.
    if (!options.wait) return MISSED_GETSET;
    return this.#order.run(scope.prefix, id, () => this.connection().then((later) => this.#getset(later, scope, id, options)), { signal: options.signal });
  }

  async #getset(
    connection: Channel,
    scope: Scope,
    id: string,
    options: { wait: boolean; signal?: AbortSignal | undefined },
  ): Promise<GetSetHandle<T> | MissedGetSetHandle> {
    const result = await connection.request(
      GetSet,
      { scope: scope.path, id, wait: options.wait },
      {
        signal: options.signal,
        abandoned: (late) => {
          if (late.handle !== null) connection.notify(Release, { handle: late.handle });
        },
      },
    );
    if (result.handle === null) return MISSED_GETSET;
    const handle = result.handle;
    const read = this.#records(connection, handle, [result.item, result.stale], { corruptIsMiss: true });
    const [itemRecord, staleRecord] = read instanceof Promise ? await read : read;
    const releaseAtDaemon = this.#releaser(connection, handle);
    let released = false;
    let writes: Promise<void> = Promise.resolve();
    // Async, so that every refusal (a bad expiry, a released handle) is a rejection; the write is queued at once.
    const set = async (value: T, options?: ExpiryOptions): Promise<void> => {
      const expiry = checkExpiry(options);
      if (!released && this.#closed) throw closedError();
      if (released || connection.lost) {
        throw new CacheError('CACHE_LOCK_NOT_HELD', released ? 'This getset handle was released.' : 'The connection that held this lock was lost.');
      }
      const write = writes.then(() => {
        const encoded = this.#adapter.encode(value);
        const { ttlMs, staleMs } = expiry;
        return connection.request(HandleSet, { handle, value: encoded, ttlMs, staleMs }).catch((error: unknown) =>
          this.#byReservation(connection, encoded, error, (reservation) =>
            connection.request(HandleSetFile, { handle, reservation, encoding: encoded.encoding, ttlMs, staleMs }),
          ),
        );
      });
      writes = write.catch(() => {});
      return write;
    };
    // A reserved file, committed by number on this connection, or sent as bytes (a private one).
    const setFile = async (path: string, options?: ExpiryOptions): Promise<void> => {
      const entry = this.#reserved.get(path);
      const expiry = checkExpiry(options);
      if (!released && this.#closed) throw closedError();
      if (released || connection.lost) {
        throw new CacheError('CACHE_LOCK_NOT_HELD', released ? 'This getset handle was released.' : 'The connection that held this lock was lost.');
      }
      if (entry.connection !== null && entry.connection !== connection) throw lostReservation();
      const { ttlMs, staleMs } = expiry;
      const write = writes.then(() =>
        entry.connection === null
          ? this.#commitByBytes(entry, connection, {
              send: (value) => connection.request(HandleSet, { handle, value, ttlMs, staleMs }),
              commit: (reservation, encoding) => connection.request(HandleSetFile, { handle, reservation, encoding, ttlMs, staleMs }),
            })
          : connection.request(HandleSetFile, { handle, reservation: entry.reservation, encoding: this.#encoding(), ttlMs, staleMs }),
      );
      writes = write.catch(() => {});
      await write;
      this.#reserved.committed(path, entry);
    };
    const files = new HandleFiles(this.#handleFiles, { lost: () => connection.lost || this.#closed });
    const release = async (): Promise<void> => {
      if (released) return;
      released = true;
      const removed = files.release();
      await writes;
      await releaseAtDaemon();
      await removed;
    };
    return { item: this.#item(itemRecord!, files), stale: this.#item(staleRecord!, files), set, setFile, release, [Symbol.asyncDispose]: release };
  }

  /**
   * Reserves a file for a value: the daemon's (in its `temp/`, committed without the bytes crossing the connection)
   * when this connection reads the daemon's files, else one in this process's private directory, sent at commit.
   */
  async reserveFile(): Promise<ReservedFile> {
    const connection = await this.connection();
    if (referenceDirectoryOf(connection) !== undefined) {
      const { reservation, path } = await connection.request(ReserveFile, undefined);
      if (path !== null) return this.#reserved.add(path, { connection, reservation });
      // References were refused meanwhile: the daemon gave no path.
      connection.request(DiscardFile, { reservation }).catch(() => {});
    }
    const { reservation, path } = await this.#private.reserve();
    if (this.#closed) {
      await this.#private.discard(reservation);
      throw closedError();
    }
    return this.#reserved.add(path, { connection: null, reservation });
  }

  async setFile(scope: Scope, id: string, path: string, options: { modified: number } & ExpiryOptions): Promise<void> {
    const entry = this.#reserved.get(path);
    const { modified, ttlMs, staleMs } = options;
    if (entry.connection === null) {
      const connection = await this.connection();
      // It may take several round trips (in chunks), so later calls on the item wait for it, and it for earlier ones.
      const earlier = this.#order.before(scope.prefix, id);
      const commit = (): Promise<void> =>
        this.#commitByBytes(entry, connection, {
          send: (value) => connection.request(SetItem, { scope: scope.path, id, value, modified, ttlMs, staleMs }),
          commit: (reservation, encoding) => connection.request(SetFile, { scope: scope.path, id, reservation, encoding, modified, ttlMs, staleMs }),
        });
      await this.#order.track(scope.prefix, id, earlier === undefined ? commit() : earlier.then(commit));
    } else {
      const { connection } = entry;
      if (this.#closed) throw closedError();
      if (connection.lost) throw lostReservation();
      // As deep in the turn as a set's send (after its `await` of the connection), so that an earlier set is tracked.
      await this.connection();
      if (connection.lost) throw lostReservation();
      const commit = (): Promise<void> => connection.request(SetFile, { scope: scope.path, id, reservation: entry.reservation, encoding: this.#encoding(), modified, ttlMs, staleMs });
      await (this.#waitsBehind(scope, id) ? this.#order.run(scope.prefix, id, commit) : commit());
    }
    this.#reserved.committed(path, entry);
  }

  /**
   * Commits a reservation of this process's private directory: over the handshake's chunk size, in chunks
   * to a reservation of the daemon's that `commit` commits (the value never whole in memory); else in one message.
   */
  async #commitByBytes(
    entry: Reservation,
    connection: Channel,
    by: { send: (value: EncodedValue) => Promise<void>; commit: (reservation: number, encoding: string) => Promise<void> },
  ): Promise<void> {
    const encoding = this.#encoding();
    const chunkBytes = connection.info.capabilities.chunks?.chunkMaxBytes;
    // Opened once, and checked as a store's commit checks it: no link followed, no FIFO waited on, one link, this user's.
    const file = await this.#private.open(entry.reservation);
    try {
      if (chunkBytes !== undefined && file.sizeBytes > chunkBytes) {
        const reservation = await this.#upload(connection, { file });
        await this.#commitUpload(connection, reservation, (spent) => by.commit(spent, encoding));
      } else await by.send({ encoding, bytes: await file.readAll() });
    } finally {
      await file.close();
    }
    await this.#private.discard(entry.reservation);
  }

  #encoding(): string {
    const { encoding } = this.#adapter;
    if (encoding === undefined) throw new TypeError('This cache has no encoding to commit a file in.');
    return encoding;
  }

  async #discard(entry: Reservation): Promise<void> {
    if (entry.connection === null) await this.#private.discard(entry.reservation);
    else if (!entry.connection.lost) await entry.connection.request(DiscardFile, { reservation: entry.reservation }).catch(() => {});
  }

  async set(scope: Scope, id: string, value: T, options: { modified: number } & ExpiryOptions): Promise<void> {
    const encoded = this.#adapter.encode(value);
    const connection = await this.connection();
    if (this.#waitsBehind(scope, id)) {
      return this.#order.run(scope.prefix, id, () => this.connection().then((later) => this.#set(later, scope, id, encoded, options)));
    }
    // Awaited here: a set settles as many turns after its answer as a delete does, so calls settle in the order the
    // daemon answered them.
    await this.#set(connection, scope, id, encoded, options);
  }

  /**
   * Sends a set in one message or, when it is too large for one, by reservation: then later calls on the item wait
   * for it ({@link CallOrder}), since it takes several round trips before the daemon sees it.
   */
  #set(connection: Channel, scope: Scope, id: string, encoded: EncodedValue, options: { modified: number } & ExpiryOptions): Promise<void> {
    const { modified, ttlMs, staleMs } = options;
    let tooLarge: unknown;
    // A value too large for a message is refused at once, before anything is sent, so that the write by reservation
    // is the item's last call before any later call is sent.
    const sent = new Promise<void>((resolve, reject) =>
      connection.call(SetItem, { scope: scope.path, id, value: encoded, modified, ttlMs, staleMs }, undefined, resolve, (error: unknown) => {
        if (isCacheError(error, 'CACHE_VALUE_TOO_LARGE')) tooLarge = error;
        reject(error);
      }),
    );
    if (tooLarge === undefined) return sent;
    sent.catch(() => {});
    const upload = this.#byReservation(connection, encoded, tooLarge, (reservation) =>
      connection.request(SetFile, { scope: scope.path, id, reservation, encoding: encoded.encoding, modified, ttlMs, staleMs }),
    );
    return this.#order.track(scope.prefix, id, upload);
  }

  /**
   * After a write of `value` in one message failed with `error`: a value too large for a message goes to a reservation
   * of the daemon's (through its file with references, else in chunks) that `commit` commits; any other error is thrown.
   */
  async #byReservation(connection: Channel, value: EncodedValue, error: unknown, commit: (reservation: number) => Promise<unknown>): Promise<void> {
    // Refused before sending; a daemon without chunks or references cannot take it otherwise.
    const { capabilities } = connection.info;
    if (!isCacheError(error, 'CACHE_VALUE_TOO_LARGE') || (capabilities.chunks === undefined && referenceDirectoryOf(connection) === undefined)) throw error;
    const reservation = await this.#upload(connection, { bytes: value.bytes });
    await this.#commitUpload(connection, reservation, commit);
  }

  /**
   * Commits a reservation {@link RemoteBackend.#upload} filled; a refused commit leaves a reservation open at the daemon
   * (PROTOCOL.md: so that a client may commit it again), so this one, which no caller can name, is discarded then.
   */
  async #commitUpload(connection: Channel, reservation: number, commit: (reservation: number) => Promise<unknown>): Promise<void> {
    try {
      await commit(reservation);
    } catch (error) {
      if (!connection.lost) await connection.request(DiscardFile, { reservation }).catch(() => {});
      throw error;
    }
  }

  /**
   * Puts bytes (from memory, or a private file of `size` bytes) into a new reservation of the daemon's on
   * `connection`: into its file when the daemon gives its path (references), else by `cache/writeChunk`s of the
   * handshake's chunk size, {@link CHUNK_CREDIT} in flight, reading a file a chunk at a time. A failure discards it.
   * @throws CacheError `CACHE_VALUE_TOO_LARGE` from a daemon that offers neither, or the daemon's refusals.
   */
  async #upload(connection: Channel, source: { bytes: Uint8Array } | { file: OpenReservation }): Promise<number> {
    const { reservation, path } = await connection.request(ReserveFile, undefined);
    try {
      const size = 'bytes' in source ? source.bytes.byteLength : source.file.sizeBytes;
      const partBytes = connection.info.capabilities.chunks?.chunkMaxBytes ?? MiB;
      /** The bytes from `offset`, `length` of them, read through the checked descriptor when they come from a file. */
      const part = async (offset: number, length: number): Promise<Uint8Array> => {
        if ('bytes' in source) return source.bytes.subarray(offset, offset + length);
        const bytes = Buffer.allocUnsafe(length);
        const bytesRead = await fsCall<number>((done) => read(source.file.fd, bytes, 0, length, offset, done));
        if (bytesRead !== length) throw new CacheError('CACHE_FILE_REFUSED', `The reserved file ${source.file.path} changed while it was sent.`);
        return bytes;
      };
      if (path !== null) {
        if ('bytes' in source) await writeFile(path, source.bytes, { flag: 'r+' });
        else {
          const target = await openFile(path, 'r+');
          try {
            for (let offset = 0; offset < size; offset += partBytes) {
              const bytes = await part(offset, Math.min(partBytes, size - offset));
              // A write may take fewer bytes than given (a nearly full disk): the rest is written after them.
              for (let done = 0; done < bytes.byteLength; ) done += (await target.write(bytes, done, bytes.byteLength - done, offset + done)).bytesWritten;
            }
          } finally {
            await target.close();
          }
        }
        return reservation;
      }
      if (connection.info.capabilities.chunks === undefined) throw new CacheError('CACHE_VALUE_TOO_LARGE', 'The daemon takes this value neither as a file nor in chunks, and it is too large for a message.');
      const credit = chunkWritesOf(connection);
      const pending = new Set<Promise<void>>();
      let failure: { error: unknown } | undefined;
      for (let offset = 0; offset < size && !failure; offset += partBytes) {
        const bytes = await part(offset, Math.min(partBytes, size - offset));
        // At most CHUNK_CREDIT of this upload's chunks in flight, and at most the daemon's limit of the connection's.
        while (pending.size >= CHUNK_CREDIT) await Promise.race(pending);
        await credit.take();
        // Appends reach the daemon in order, and it writes one reservation's chunks in the order received.
        let request: Promise<void>;
        try {
          request = connection.request(WriteChunk, { reservation, offsetBytes: offset, bytes });
        } catch (error) {
          credit.give();
          throw error;
        }
        const sent: Promise<void> = request.then(
          () => {
            credit.give();
            pending.delete(sent);
          },
          (error: unknown) => {
            credit.give();
            pending.delete(sent);
            failure ??= { error };
          },
        );
        pending.add(sent);
      }
      await Promise.all(pending);
      if (failure) throw failure.error;
      return reservation;
    } catch (error) {
      // Awaited: once the write is refused, the daemon holds no file of it.
      if (!connection.lost) await connection.request(DiscardFile, { reservation }).catch(() => {});
      throw error;
    }
  }

  async delete(scope: Scope, id: string): Promise<void> {
    const connection = await this.connection();
    if (this.#waitsBehind(scope, id)) return this.#order.run(scope.prefix, id, async () => void (await (await this.connection()).request(Delete, { scope: scope.path, id })));
    await connection.request(Delete, { scope: scope.path, id });
  }

  async clear(scope: Scope): Promise<void> {
    const connection = await this.connection();
    if (this.#waitsBehind(scope)) return this.#order.run(scope.prefix, undefined, async () => void (await (await this.connection()).request(Clear, { scope: scope.path })));
    await connection.request(Clear, { scope: scope.path });
  }

  async list(scope: Scope, options: { cursor?: string; limit: number }): Promise<StoreListing> {
    const page = await (await this.connection()).request(List, { scope: scope.path, cursor: options.cursor, limit: options.limit });
    const ms = (seconds: number | null): number | undefined => (seconds === null ? undefined : seconds * 1000);
    return {
      items: page.items.map((entry) => {
        const expiresAtMs = ms(entry.expires);
        const accessedAtMs = ms(entry.accessed);
        return {
          id: entry.id,
          sizeBytes: entry.sizeBytes,
          modified: entry.modified,
          ...(expiresAtMs === undefined ? {} : { expiresAtMs }),
          ...(accessedAtMs === undefined ? {} : { accessedAtMs }),
        };
      }),
      scopes: [...page.scopes],
      cursor: page.cursor,
    };
  }

  async status(options: { scope?: readonly string[] } = {}): Promise<StatusResult> {
    return (await this.connection()).request(Status, options.scope === undefined ? {} : { scope: options.scope });
  }

  async locks(): Promise<LockInfo[]> {
    return (await (await this.connection()).request(Locks, undefined)).locks;
  }

  async gc(options: { dryRun: boolean }): Promise<GcResult> {
    return (await this.connection()).request(Gc, { dryRun: options.dryRun });
  }

  async verify(options: { fix: boolean }): Promise<VerifyReport> {
    return (await this.connection()).request(Verify, { fix: options.fix });
  }

  async close(): Promise<void> {
    this.#closed = true;
    const connection = this.#connection ?? (await this.#connecting?.catch(() => undefined));
    await connection?.close();
    await releaseAll(this.#handleFiles);
    // The daemon's reservations went with the connection; the private ones go now.
    this.#reserved.drain();
    await this.#private.discardAll();
  }
}

/** The `Cache` API served by the hoard daemon; see `connect`. */
export class RemoteCache<T> extends RootCacheView<T> {
  readonly #backend: RemoteBackend<T>;

  constructor(backend: RemoteBackend<T>) {
    super(backend);
    this.#backend = backend;
  }

  /**
   * What the daemon reports of itself: pid, version, connections, locks, hits and misses, the size against its limit,
   * evictions and expirations, per top-level scope; with `scope` (a path of names), that scope's size and items
   * counted from the data.
   */
  async status(options: { scope?: readonly string[] } = {}): Promise<StatusResult> {
    if (typeof options !== 'object' || options === null) throw new TypeError('status options must be an object');
    if (options.scope !== undefined && (!Array.isArray(options.scope) || options.scope.some((name) => typeof name !== 'string' || name === ''))) {
      throw new TypeError('scope must be an array of non-empty scope names');
    }
    return this.#backend.status(options);
  }

  /** Every held lock and waiting request in the daemon: item (or scope), kind, state, client name and pid, since when. */
  async locks(): Promise<LockInfo[]> {
    return this.#backend.locks();
  }

  /**
   * Runs an eviction and expiry pass now; with `dryRun` (default `false`), only counts what it would remove.
   * Rejects with a TypeError for options that are not an object or a `dryRun` that is not a boolean, sending nothing.
   */
  async gc(options: { dryRun?: boolean } = {}): Promise<GcResult> {
    return this.#backend.gc({ dryRun: flagOption(options, 'dryRun', 'gc') });
  }

  /**
   * Recounts the daemon's data against the figures it keeps; with `fix` (default `false`), mends what differs.
   * Rejects with a TypeError for options that are not an object or a `fix` that is not a boolean, sending nothing.
   */
  async verify(options: { fix?: boolean } = {}): Promise<VerifyReport> {
    return this.#backend.verify({ fix: flagOption(options, 'fix', 'verify') });
  }
}
