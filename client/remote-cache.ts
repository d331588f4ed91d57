import type { CacheItem, GetHandle, GetSetHandle, MissedGetSetHandle } from '../src/cache.js';
import { type CacheBackend, MISSED_GETSET } from '../src/cache-backend.js';
import { RootCacheView } from '../src/cache-view.js';
import { CacheError } from '../src/errors.js';
import type { EncodedValue } from '../src/level-store.js';
import type { ValueAdapter } from '../src/local-backend.js';
import { Clear, Delete, Get, GetSet, HandleSet, Release, Set as SetRequest, Status, type StatusResult, type WireItem } from '../src/protocol.js';
import type { Scope } from '../src/scope-path.js';
import type { DaemonConnection } from './daemon-connection.js';

function toBase64(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('base64');
}

/** A {@link CacheBackend} that forwards every call to the daemon; the codec runs here, in the client. */
export class RemoteBackend<T> implements CacheBackend<T> {
  readonly #adapter: ValueAdapter<T, EncodedValue>;
  readonly #open: () => Promise<DaemonConnection>;
  #connection: DaemonConnection | undefined;
  #connecting: Promise<DaemonConnection> | undefined;
  #closed = false;

  constructor(adapter: ValueAdapter<T, EncodedValue>, open: () => Promise<DaemonConnection>, first?: DaemonConnection) {
    this.#adapter = adapter;
    this.#open = open;
    this.#connection = first;
  }

  /** The live connection, reconnecting (and starting the daemon if need be) after a loss. */
  async connection(): Promise<DaemonConnection> {
    if (this.#closed) throw new CacheError('CACHE_CLOSED', 'The cache is closed.');
    if (this.#connection && !this.#connection.lost) return this.#connection;
    this.#connecting ??= this.#open().finally(() => (this.#connecting = undefined));
    const connection = await this.#connecting;
    if (this.#closed) {
      await connection.close();
      throw new CacheError('CACHE_CLOSED', 'The cache is closed.');
    }
    return (this.#connection = connection);
  }

  #item(wire: WireItem | null): CacheItem<T> | null {
    if (!wire) return null;
    const decode = this.#adapter.decode.bind(this.#adapter);
    const stored: EncodedValue = { encoding: wire.encoding, bytes: Buffer.from(wire.value, 'base64') };
    return { modified: wire.modified, value: async () => decode(stored) };
  }

  /** Releases a handle at the daemon, unless its connection is gone (which released it already). */
  #releaser(connection: DaemonConnection, handle: number): () => Promise<void> {
    let released = false;
    return async () => {
      if (released || connection.lost) return;
      released = true;
      await connection.notify(Release, { handle });
    };
  }

  async get(scope: Scope, id: string, signal: AbortSignal | undefined): Promise<GetHandle<T>> {
    const connection = await this.connection();
    const result = await connection.request(
      Get,
      { scope: [...scope.path], id },
      { signal, abandoned: (late) => void this.#releaser(connection, late.handle)().catch(() => {}) },
    );
    const release = this.#releaser(connection, result.handle);
    return { item: this.#item(result.item), release, [Symbol.asyncDispose]: release };
  }

  async getset(
    scope: Scope,
    id: string,
    options: { wait: boolean; signal: AbortSignal | undefined },
  ): Promise<GetSetHandle<T> | MissedGetSetHandle> {
    const connection = await this.connection();
    const result = await connection.request(
      GetSet,
      { scope: [...scope.path], id, wait: options.wait },
      {
        signal: options.signal,
        abandoned: (late) => {
          if (late.handle !== null) void this.#releaser(connection, late.handle)().catch(() => {});
        },
      },
    );
    if (result.handle === null) return MISSED_GETSET;
    const handle = result.handle;
    const releaseAtDaemon = this.#releaser(connection, handle);
    let released = false;
    let writes: Promise<void> = Promise.resolve();
    const set = (value: T): Promise<void> => {
      if (!released && this.#closed) return Promise.reject(new CacheError('CACHE_CLOSED', 'The cache is closed.'));
      if (released || connection.lost) {
        return Promise.reject(
          new CacheError('CACHE_LOCK_NOT_HELD', released ? 'This getset handle was released.' : 'The connection that held this lock was lost.'),
        );
      }
      const write = writes.then(async () => {
        const { encoding, bytes } = this.#adapter.encode(value);
        const base64 = toBase64(bytes);
        connection.checkValueSize(base64, []);
        await connection.request(HandleSet, { handle, encoding, value: base64 });
      });
      writes = write.catch(() => {});
      return write;
    };
    const release = async (): Promise<void> => {
      if (released) return;
      released = true;
      await writes;
      await releaseAtDaemon();
    };
    return { item: this.#item(result.item), set, release, [Symbol.asyncDispose]: release };
  }

  async set(scope: Scope, id: string, value: T, modified: number): Promise<void> {
    const { encoding, bytes } = this.#adapter.encode(value);
    const connection = await this.connection();
    const base64 = toBase64(bytes);
    connection.checkValueSize(base64, [...scope.path, id]);
    await connection.request(SetRequest, { scope: [...scope.path], id, encoding, value: base64, modified });
  }

  async delete(scope: Scope, id: string): Promise<void> {
    await (await this.connection()).request(Delete, { scope: [...scope.path], id });
  }

  async clear(scope: Scope): Promise<void> {
    await (await this.connection()).request(Clear, { scope: [...scope.path] });
  }

  async status(): Promise<StatusResult> {
    return (await this.connection()).request(Status);
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
