import { RootCacheView } from './cache-view.js';
import { LocalBackend } from './local-backend.js';
import type { Scope } from './scope-path.js';
import type { Store, StoreListing } from './store.js';

/** A {@link Store} that keeps nothing. */
class NullStore implements Store<never> {
  read(): undefined {
    return undefined;
  }
  async write(): Promise<void> {}
  async delete(): Promise<void> {}
  async clear(): Promise<void> {}
  /** Lists nothing; it never gives a cursor, so any it is given is someone else's. */
  async list(_scope: Scope, options: { cursor?: string }): Promise<StoreListing> {
    if (options.cursor !== undefined) throw new TypeError('Not a cursor of this scope.');
    return { items: [], scopes: [], cursor: null };
  }
  async close(): Promise<void> {}
}

const discard = {
  encode: (): never => undefined as never,
  decode: (): never => {
    throw new Error('NullStore holds no values');
  },
  fromBytes: (): never => undefined as never,
};

/**
 * A cache that stores nothing: `get` finds nothing and setters do nothing, but locks behave as in any cache; a file
 * committed by `setFile` is checked, read and removed.
 */
export class NoOpCache<T> extends RootCacheView<T> {
  constructor() {
    super(new LocalBackend<T, never>(new NullStore(), discard));
  }
}
