import { flagOption } from '../src/flag-option.js';
import type { CacheItem, ExpiryOptions, GetHandle, GetSetHandle, MissedGetSetHandle } from '../src/cache.js';
import { type CacheBackend, MISSED_GETSET } from '../src/cache-backend.js';
import { checkExpiry, RootCacheView } from '../src/cache-view.js';
import { CacheError } from '../src/errors.js';
import type { ValueAdapter } from '../src/local-backend.js';
import type { Scope } from '../src/scope-path.js';
import type { EncodedRecord, EncodedValue, StoreListing, VerifyReport } from '../src/store.js';
import {
  Clear,
  Delete,
  Gc,
  type GcResult,
  Get,
  GetSet,
  HandleSet,
  List,
  type LockInfo,
  Locks,
  Release,
  Set as SetItem,
  Status,
  type StatusResult,
  Verify,
} from '../src/wire/protocol.js';
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
    // The wire carries `expires` in seconds, as `expiresAtMs / 1000`; `* 1000` then `/ 1000` gives it back exactly.
    const expires = record.expiresAtMs === undefined ? null : record.expiresAtMs / 1000;
    return { modified: record.modified, expires, value: async () => adapter.decode(record.value) };
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
    if (this.#closed || !current || current.lost) return this.connection().then((connection) => this.#get(connection, scope, id, options));
    // Sent one microtask from now, as the other calls are (after their `await` of the connection), so that calls
    // reach the daemon in the order they were made; but settled directly, without async wrappers that each cost
    // the caller promise hops on every get.
    return new Promise((resolve, reject) => {
      queueMicrotask(() => {
        if (this.#closed || current.lost) this.connection().then((connection) => this.#get(connection, scope, id, options)).then(resolve, reject);
        else this.#get(current, scope, id, options).then(resolve, reject);
      });
    });
  }

  #get(connection: Channel, scope: Scope, id: string, options: { signal?: AbortSignal | undefined; wait?: boolean }): Promise<GetHandle<T> | null> {
    const { signal } = options;
    let answer;
    try {
      answer = connection.request(
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
      );
    } catch (error) {
      return Promise.reject(error);
    }
    return answer.then((result) => {
      if (result.handle === null) return null;
      const release = this.#releaser(connection, result.handle);
      return { item: this.#item(result.item), release, [Symbol.asyncDispose]: release };
    });
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
    // Async, so that every refusal (a bad expiry, a released handle) is a rejection; the write is queued at once.
    const set = async (value: T, options?: ExpiryOptions): Promise<void> => {
      const expiry = checkExpiry(options);
      if (!released && this.#closed) throw closedError();
      if (released || connection.lost) {
        throw new CacheError('CACHE_LOCK_NOT_HELD', released ? 'This getset handle was released.' : 'The connection that held this lock was lost.');
      }
      const write = writes.then(() =>
        connection.request(HandleSet, { handle, value: this.#adapter.encode(value), ttlMs: expiry.ttlMs, staleMs: expiry.staleMs }),
      );
      writes = write.catch(() => {});
      return write;
    };
    const release = async (): Promise<void> => {
      if (released) return;
      released = true;
      await writes;
      await releaseAtDaemon();
    };
    return { item: this.#item(result.item), stale: this.#item(result.stale), set, release, [Symbol.asyncDispose]: release };
  }

  async set(scope: Scope, id: string, value: T, options: { modified: number } & ExpiryOptions): Promise<void> {
    const { modified, ttlMs, staleMs } = options;
    const encoded = this.#adapter.encode(value);
    const connection = await this.connection();
    await connection.request(SetItem, { scope: scope.path, id, value: encoded, modified, ttlMs, staleMs });
  }

  async delete(scope: Scope, id: string): Promise<void> {
    await (await this.connection()).request(Delete, { scope: scope.path, id });
  }

  async clear(scope: Scope): Promise<void> {
    await (await this.connection()).request(Clear, { scope: scope.path });
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
