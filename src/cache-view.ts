import type {
  Cache,
  ExpiryOptions,
  GetHandle,
  GetNowOptions,
  GetOptions,
  ListOptions,
  ListPage,
  GetSetHandle,
  GetSetOptions,
  MissedGetSetHandle,
  ReservedFile,
  SetOptions,
} from './cache.js';
import { type CacheBackend, nowSeconds } from './cache-backend.js';
import { childScope, ROOT_SCOPE, type Scope } from './scope-path.js';
import type { StoreListing } from './store.js';

function checkId(id: unknown): asserts id is string {
  if (typeof id !== 'string') throw new TypeError(`A cache item id must be a string, got ${describe(id)}.`);
}

function checkOptions(options: unknown): void {
  if (options !== undefined && (typeof options !== 'object' || options === null)) {
    throw new TypeError(`Options must be an object, got ${describe(options)}.`);
  }
}

function checkSignal(signal: unknown): asserts signal is AbortSignal | undefined {
  if (signal !== undefined && !(signal instanceof AbortSignal)) {
    throw new TypeError(`signal must be an AbortSignal, got ${describe(signal)}.`);
  }
}

/** The most entries a listing page may hold. */
export const MAX_LIST_LIMIT = 10_000;

/**
 * Checks a write's expiry options: `ttlMs` a finite number above 0, `staleMs` a finite number of 0 or more and only
 * with `ttlMs`; returns them without other properties.
 * @throws TypeError otherwise.
 */
export function checkExpiry(options: unknown): ExpiryOptions {
  checkOptions(options);
  const { ttlMs, staleMs } = (options ?? {}) as { ttlMs?: unknown; staleMs?: unknown };
  if (ttlMs !== undefined && (typeof ttlMs !== 'number' || !Number.isFinite(ttlMs) || ttlMs <= 0)) {
    throw new TypeError(`ttlMs must be a finite number of milliseconds above 0, got ${typeof ttlMs === 'number' ? ttlMs : describe(ttlMs)}.`);
  }
  if (staleMs !== undefined) {
    if (typeof staleMs !== 'number' || !Number.isFinite(staleMs) || staleMs < 0) {
      throw new TypeError(`staleMs must be a finite number of milliseconds, 0 or more, got ${typeof staleMs === 'number' ? staleMs : describe(staleMs)}.`);
    }
    if (ttlMs === undefined) throw new TypeError('staleMs needs ttlMs: only an item that expires can be kept stale.');
  }
  return ttlMs === undefined ? {} : staleMs === undefined ? { ttlMs } : { ttlMs, staleMs };
}

/**
 * Checks a listing's options and fills in the default limit (1,000).
 * @throws TypeError for a limit that is not an integer from 1 to 10,000, or a cursor that is not a string.
 */
export function checkListOptions(options: unknown): { cursor?: string; limit: number } {
  checkOptions(options);
  const { cursor, limit = 1000 } = (options ?? {}) as { cursor?: unknown; limit?: unknown };
  if (typeof limit !== 'number' || !Number.isInteger(limit) || limit < 1 || limit > MAX_LIST_LIMIT) {
    throw new TypeError(`limit must be an integer from 1 to ${MAX_LIST_LIMIT}, got ${String(limit)}.`);
  }
  if (cursor !== undefined && typeof cursor !== 'string') {
    throw new TypeError(`cursor must be a string from an earlier page, got ${describe(cursor)}.`);
  }
  return cursor === undefined ? { limit } : { cursor, limit };
}

function describe(value: unknown): string {
  return value === null ? 'null' : Array.isArray(value) ? 'an array' : typeof value;
}

/** A store's listing as the API gives it: times in seconds since the epoch, `null` for none. */
export function listPage(listing: StoreListing): ListPage {
  const seconds = (ms: number | undefined): number | null => (ms === undefined ? null : ms / 1000);
  return {
    items: listing.items.map((item) => ({
      id: item.id,
      sizeBytes: item.sizeBytes,
      modified: item.modified,
      expires: seconds(item.expiresAtMs),
      accessed: seconds(item.accessedAtMs),
    })),
    scopes: listing.scopes,
    cursor: listing.cursor,
  };
}

/**
 * The one implementation of {@link Cache}: it checks arguments, keeps scope objects unique, and
 * hands everything else to a {@link CacheBackend}. Scopes of any backend are instances of this class.
 */
export class CacheView<T> implements Cache<T> {
  readonly #backend: CacheBackend<T>;
  readonly #scope: Scope;
  /** Scope objects stay unique while anyone can observe them, and are collectable after. */
  readonly #children = new Map<string, WeakRef<CacheView<T>>>();
  readonly #forget = new FinalizationRegistry<string>((name) => {
    if (this.#children.get(name)?.deref() === undefined) this.#children.delete(name);
  });

  constructor(backend: CacheBackend<T>, scope: Scope = ROOT_SCOPE) {
    this.#backend = backend;
    this.#scope = scope;
  }

  withScope(name: string): Cache<T> {
    if (typeof name !== 'string' || name === '') {
      throw new TypeError(`A scope name must be a non-empty string, got ${name === '' ? 'an empty string' : describe(name)}.`);
    }
    const known = this.#children.get(name)?.deref();
    if (known) return known;
    const child = new CacheView<T>(this.#backend, childScope(this.#scope, name));
    this.#children.set(name, new WeakRef(child));
    this.#forget.register(child, name);
    return child;
  }

  get(id: string, options?: GetOptions & { wait?: true }): Promise<GetHandle<T>>;
  get(id: string, options: GetNowOptions): Promise<GetHandle<T> | null>;
  get(id: string, options?: GetNowOptions): Promise<GetHandle<T> | null> {
    // Not async, so that the backend's promise reaches the caller without hops; a refusal still rejects.
    try {
      return this.#backend.get(this.#scope, id, { signal: options?.signal, wait: checkLockOptions(id, options) });
    } catch (error) {
      return Promise.reject(error);
    }
  }

  getset(id: string, options?: GetSetOptions & { wait?: true }): Promise<GetSetHandle<T>>;
  getset(id: string, options: GetSetOptions): Promise<GetSetHandle<T> | MissedGetSetHandle>;
  async getset(id: string, options?: GetSetOptions): Promise<GetSetHandle<T> | MissedGetSetHandle> {
    return this.#backend.getset(this.#scope, id, { wait: checkLockOptions(id, options), signal: options?.signal });
  }

  async set(id: string, value: T, options?: SetOptions): Promise<void> {
    checkId(id);
    return this.#backend.set(this.#scope, id, value, checkSetOptions(options));
  }

  async reserveFile(): Promise<ReservedFile> {
    return this.#backend.reserveFile();
  }

  async setFile(id: string, path: string, options?: SetOptions): Promise<void> {
    checkId(id);
    if (typeof path !== 'string') throw new TypeError(`A reserved file's path must be a string, got ${describe(path)}.`);
    return this.#backend.setFile(this.#scope, id, path, checkSetOptions(options));
  }

  async delete(id: string): Promise<void> {
    checkId(id);
    return this.#backend.delete(this.#scope, id);
  }

  async clear(): Promise<void> {
    return this.#backend.clear(this.#scope);
  }

  async list(options?: ListOptions): Promise<ListPage> {
    return listPage(await this.#backend.list(this.#scope, checkListOptions(options)));
  }
}

/** A {@link CacheView} that owns its backend: the root object each backend's class derives from. */
export class RootCacheView<T> extends CacheView<T> {
  readonly #backend: CacheBackend<T>;

  constructor(backend: CacheBackend<T>) {
    super(backend);
    this.#backend = backend;
  }

  /**
   * Rejects pending lock waits with `CACHE_CLOSED`, waits for running writes and frees the storage.
   * Later calls on this cache and its scopes reject with `CACHE_CLOSED`; calling it again does nothing.
   */
  close(): Promise<void> {
    return this.#backend.close();
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

/** Checks a write's options and fills in `modified` (now). */
function checkSetOptions(options: SetOptions | undefined): { modified: number } & ExpiryOptions {
  checkOptions(options);
  const modified = options?.modified === undefined ? nowSeconds() : options.modified;
  if (typeof modified !== 'number' || !Number.isFinite(modified)) {
    throw new TypeError(`modified must be a finite number of seconds, got ${String(modified)}.`);
  }
  return { modified, ...checkExpiry(options) };
}

/**
 * Checks a `get`'s or `getset`'s id and options, and gives its `wait`; an already aborted signal throws its reason, as
 * every API that takes a signal does, even with `wait: false`.
 */
function checkLockOptions(id: string, options: GetNowOptions | GetSetOptions | undefined): boolean {
  checkId(id);
  checkOptions(options);
  checkSignal(options?.signal);
  const wait = options?.wait ?? true;
  if (typeof wait !== 'boolean') throw new TypeError(`wait must be a boolean, got ${describe(wait)}.`);
  options?.signal?.throwIfAborted();
  return wait;
}
