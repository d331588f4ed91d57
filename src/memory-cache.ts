import { RootCacheView } from './cache-view.js';
import { LocalBackend, type LocalBackendOptions } from './local-backend.js';
import { MemoryStore } from './memory-store.js';

const keepAsGiven = { encode: <T>(value: T): T => value, decode: <T>(value: T): T => value };

/** A cache in this process's memory; values are kept as given, not copied. */
export class MemoryCache<T> extends RootCacheView<T> {
  constructor() {
    super(memoryBackend<T>());
  }
}

/** The backend of a {@link MemoryCache}; with options (a clock, a sweep interval) for tests, which build a view on it. */
export function memoryBackend<T>(options: LocalBackendOptions<T> = {}): LocalBackend<T, T> {
  return new LocalBackend<T, T>(new MemoryStore<T>(), keepAsGiven, options);
}
