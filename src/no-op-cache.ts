import { RootCacheView } from './cache-view.js';
import { LocalBackend } from './local-backend.js';
import type { Store, StoreListing } from './store.js';

/** A {@link Store} that keeps nothing. */
class NullStore implements Store<never> {
  read(): undefined {
    return undefined;
  }
  async write(): Promise<void> {}
  async delete(): Promise<void> {}
  async clear(): Promise<void> {}
  async list(): Promise<StoreListing> {
    return { items: [], scopes: [], cursor: null };
  }
  async close(): Promise<void> {}
}

const discard = {
  encode: (): never => undefined as never,
  decode: (): never => {
    throw new Error('NullStore holds no values');
  },
};

/** A cache that stores nothing: `get` finds nothing and setters do nothing, but locks behave as in any cache. */
export class NoOpCache<T> extends RootCacheView<T> {
  constructor() {
    super(new LocalBackend<T, never>(new NullStore(), discard));
  }
}
