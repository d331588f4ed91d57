import type { CacheItem, GetHandle, GetSetHandle, MissedGetSetHandle } from '../src/cache.js';
import { type CacheBackend, MISSED_GETSET } from '../src/cache-backend.js';
import { RootCacheView } from '../src/cache-view.js';
import { CacheError } from '../src/errors.js';
import type { ValueAdapter } from '../src/local-backend.js';
import type { Scope } from '../src/scope-path.js';
import type { EncodedRecord, EncodedValue, StoreListing } from '../src/store.js';
import { Clear, Delete, Get, GetSet, HandleSet, Release, Set as SetItem, Status, type StatusResult } from '../src/wire/protocol.js';
import { type Channel, closedError } from './channel.js';

/** A {@link CacheBackend} that forwards every call to the daemon; the codec runs here, in the client. */
export class RemoteBackend<T> implements CacheBackend<T> {
  readonly #adapter: ValueAdapter<T, EncodedValue>;
  readonly #open: () => Promise<Channel>;
  #connection: Channel | undefined;
  #connecting: Promise<Channel> | undefined;
  #closed = false;

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

  #item(record: EncodedRecord | null): CacheItem<T> | null {
    if (!record) return null;
    const adapter = this.#adapter;
    return { modified: record.modified, value: async () => adapter.decode(record.value) };
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

  async get(scope: Scope, id: string, options: { signal?: AbortSignal | undefined; wait?: boolean }): Promise<GetHandle<T> | null> {
    const { signal } = options;
    const connection = await this.connection();
    const result = await connection.request(Get, { scope: scope.path, id }, { signal, abandoned: (late) => connection.notify(Release, { handle: late.handle }) });
    const release = this.#releaser(connection, result.handle);
    return { item: this.#item(result.item), release, [Symbol.asyncDispose]: release };
  }

  async getset(
    scope: Scope,
    id: string,
    options: { wait: boolean; signal?: AbortSignal | undefined },
  ): Promise<GetSetHandle<T> | MissedGetSetHandle> {
    const connection = await this.connection();
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
    const releaseAtDaemon = this.#releaser(connection, handle);
    let released = false;
    let writes: Promise<void> = Promise.resolve();
    const set = (value: T): Promise<void> => {
      if (!released && this.#closed) return Promise.reject(closedError());
      if (released || connection.lost) {
        return Promise.reject(
          new CacheError('CACHE_LOCK_NOT_HELD', released ? 'This getset handle was released.' : 'The connection that held this lock was lost.'),
        );
      }
      const write = writes.then(() => connection.request(HandleSet, { handle, value: this.#adapter.encode(value) }));
      writes = write.catch(() => {});
      return write;
    };
    const release = async (): Promise<void> => {
      if (released) return;
      released = true;
      await writes;
      await releaseAtDaemon();
    };
    return { item: this.#item(result.item), stale: null, set, release, [Symbol.asyncDispose]: release };
  }

  async set(scope: Scope, id: string, value: T, options: { modified: number }): Promise<void> {
    const { modified } = options;
    const encoded = this.#adapter.encode(value);
    const connection = await this.connection();
    await connection.request(SetItem, { scope: scope.path, id, value: encoded, modified });
  }

  async delete(scope: Scope, id: string): Promise<void> {
    await (await this.connection()).request(Delete, { scope: scope.path, id });
  }

  async clear(scope: Scope): Promise<void> {
    await (await this.connection()).request(Clear, { scope: scope.path });
  }

  async list(): Promise<StoreListing> {
    throw new CacheError('CACHE_INTERNAL', 'Listing is not served yet.');
  }

  async status(): Promise<StatusResult> {
    return (await this.connection()).request(Status, undefined);
  }

  async close(): Promise<void> {
    this.#closed = true;
    const connection = this.#connection ?? (await this.#connecting?.catch(() => undefined));
    await connection?.close();
  }
}

/** The `Cache` API served by the hoard daemon; see `connect`. */
export class RemoteCache<T> extends RootCacheView<T> {
  readonly #backend: RemoteBackend<T>;

  constructor(backend: RemoteBackend<T>) {
    super(backend);
    this.#backend = backend;
  }

  /** What the daemon reports of itself: pid, version, connections, locks, hits and misses. */
  status(): Promise<StatusResult> {
    return this.#backend.status();
  }
}
