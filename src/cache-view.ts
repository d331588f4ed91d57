import type {
  Cache,
  GetHandle,
  GetNowOptions,
  GetOptions,
  ListOptions,
  ListPage,
  GetSetHandle,
  GetSetOptions,
  MissedGetSetHandle,
  SetOptions,
} from './cache.js';
import { type CacheBackend, nowSeconds } from './cache-backend.js';
import { childScope, ROOT_SCOPE, type Scope } from './scope-path.js';

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

function describe(value: unknown): string {
  return value === null ? 'null' : Array.isArray(value) ? 'an array' : typeof value;
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
  async get(id: string, options?: GetNowOptions): Promise<GetHandle<T> | null> {
    checkId(id);
    checkOptions(options);
    checkSignal(options?.signal);
    options?.signal?.throwIfAborted();
    return this.#backend.get(this.#scope, id, { signal: options?.signal, wait: options?.wait ?? true });
  }

  getset(id: string, options?: GetSetOptions & { wait?: true }): Promise<GetSetHandle<T>>;
  getset(id: string, options: GetSetOptions): Promise<GetSetHandle<T> | MissedGetSetHandle>;
  async getset(id: string, options?: GetSetOptions): Promise<GetSetHandle<T> | MissedGetSetHandle> {
    checkId(id);
    checkOptions(options);
    checkSignal(options?.signal);
    const wait = options?.wait ?? true;
    if (typeof wait !== 'boolean') throw new TypeError(`wait must be a boolean, got ${describe(wait)}.`);
    // As every API that takes a signal does: an already aborted one rejects with its reason, even with `wait: false`.
    options?.signal?.throwIfAborted();
    return this.#backend.getset(this.#scope, id, { wait, signal: options?.signal });
  }

  async set(id: string, value: T, options?: SetOptions): Promise<void> {
    checkId(id);
    checkOptions(options);
    const modified = options?.modified === undefined ? nowSeconds() : options.modified;
    if (typeof modified !== 'number' || !Number.isFinite(modified)) {
      throw new TypeError(`modified must be a finite number of seconds, got ${String(modified)}.`);
    }
    return this.#backend.set(this.#scope, id, value, { modified, ttlMs: options?.ttlMs, staleMs: options?.staleMs });
  }

  async delete(id: string): Promise<void> {
    checkId(id);
    return this.#backend.delete(this.#scope, id);
  }

  async clear(): Promise<void> {
    return this.#backend.clear(this.#scope);
  }

  async list(options?: ListOptions): Promise<ListPage> {
    checkOptions(options);
    const listing = await this.#backend.list(this.#scope, { cursor: options?.cursor, limit: options?.limit ?? 1000 });
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
