/**
 * Keeps a `RemoteCache`'s calls on an item in the order they were made when one of them takes several round trips
 * before it reaches the item (a write by reservation), without holding up calls on other items.
 *
 * A call either goes at once ({@link CallOrder.before} gives nothing) or is chained after what it must follow and
 * becomes the last call of its item (or, for a clear, of its scope) itself, so later calls queue behind it in turn.
 */
export class CallOrder {
  /** The last waiting or long call of each item, by `prefix:id`. */
  readonly #items = new Map<string, Promise<void>>();
  /** The last waiting clear of each scope, by its key prefix. */
  readonly #scopes = new Map<string, Promise<void>>();
  /** How many of the calls kept in order are writes (all but gets), by `prefix:id` for items and by prefix for scopes. */
  readonly #writes = new Map<string, number>();

  /** How many items and scopes have calls to keep in order (0 in the common case: every call goes at once). */
  get size(): number {
    return this.#items.size + this.#scopes.size;
  }

  /** What a call on item `id` of the scope with key prefix `prefix` (on the whole scope, without `id`) must follow. */
  before(prefix: string, id?: string): Promise<unknown> | undefined {
    if (this.size === 0) return undefined;
    const earlier: Promise<void>[] = [];
    if (id === undefined) {
      for (const [key, last] of this.#items) if (key.startsWith(prefix)) earlier.push(last);
      for (const [scope, last] of this.#scopes) if (scope.startsWith(prefix) || prefix.startsWith(scope)) earlier.push(last);
    } else {
      const last = this.#items.get(itemKey(prefix, id));
      if (last !== undefined) earlier.push(last);
      for (const [scope, cleared] of this.#scopes) if (prefix.startsWith(scope)) earlier.push(cleared);
    }
    if (earlier.length === 0) return undefined;
    return earlier.length === 1 ? earlier[0] : Promise.all(earlier);
  }

  /**
   * Whether a write (a set, delete, getset or clear) kept in order comes before a call on item `id` of the scope with
   * key prefix `prefix`: a writer waiting, for a call that would not wait.
   */
  writesBefore(prefix: string, id: string): boolean {
    if (this.#writes.has(itemKey(prefix, id))) return true;
    for (const scope of this.#scopes.keys()) if (prefix.startsWith(scope)) return true;
    return false;
  }

  /**
   * Makes `call` the last call of its item (its scope, without `id`) until it settles, a write unless `read`; returns
   * `call`.
   */
  track<R>(prefix: string, id: string | undefined, call: Promise<R>, options: { read?: boolean } = {}): Promise<R> {
    const map = id === undefined ? this.#scopes : this.#items;
    const key = id === undefined ? prefix : itemKey(prefix, id);
    const write = options.read !== true;
    if (write) this.#writes.set(key, (this.#writes.get(key) ?? 0) + 1);
    const last: Promise<void> = call.then(forget, forget).then(() => {
      if (map.get(key) === last) map.delete(key);
      if (!write) return;
      const left = this.#writes.get(key)! - 1;
      if (left === 0) this.#writes.delete(key);
      else this.#writes.set(key, left);
    });
    map.set(key, last);
    return call;
  }

  /**
   * Runs `send` now when nothing comes before it, else after what does, as its item's (scope's) last call (a write
   * unless `read`). Aborted by
   * `signal` while it waits, the call rejects at once with its reason and is never sent; the calls after it still wait
   * for those before it.
   */
  run<R>(prefix: string, id: string | undefined, send: () => Promise<R>, options: { signal?: AbortSignal | undefined; read?: boolean } = {}): Promise<R> {
    const { signal } = options;
    const earlier = this.before(prefix, id);
    if (earlier === undefined) return send();
    let sent = false;
    const call = this.track(
      prefix,
      id,
      earlier.then(() => {
        sent = true;
        signal?.throwIfAborted();
        return send();
      }),
      { read: options.read === true },
    );
    if (signal === undefined) return call;
    return new Promise<R>((resolve, reject) => {
      const abort = (): void => {
        if (!sent) reject(signal.reason);
      };
      if (signal.aborted) abort();
      signal.addEventListener('abort', abort, { once: true });
      const done = (): void => signal.removeEventListener('abort', abort);
      call.then(
        (value) => (done(), resolve(value)),
        (error: unknown) => (done(), reject(error as Error)),
      );
    });
  }
}

/** A scope's prefix never holds a bare `:`, so `prefix:id` names one item. */
function itemKey(prefix: string, id: string): string {
  return `${prefix}:${id}`;
}

function forget(): void {}
