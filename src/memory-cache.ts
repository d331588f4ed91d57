import { RootCacheView } from './cache-view.js';
import { LocalBackend } from './local-backend.js';
import { MemoryStore } from './memory-store.js';

const keepAsGiven = { encode: <T>(value: T): T => value, decode: <T>(value: T): T => value };

/** A cache in this process's memory; values are kept as given, not copied. */
export class MemoryCache<T> extends RootCacheView<T> {
  constructor() {
    super(new LocalBackend<T, T>(new MemoryStore<T>(), keepAsGiven));
  }
}
