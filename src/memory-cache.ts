import { RootCacheView } from './cache-view.js';
import { codecNamed } from './codecs.js';
import { LocalBackend, type LocalBackendOptions } from './local-backend.js';
import { MemoryStore } from './memory-store.js';

const asJson = codecNamed<unknown>('json');

/**
 * Keeps values as given; `item.path()` gives a byte array's bytes as they are, and any other value as JSON; a file
 * committed by `setFile` becomes a `Uint8Array` of its bytes.
 */
const keepAsGiven = {
  encode: <T>(value: T): T => value,
  decode: <T>(value: T): T => value,
  bytes: (value: unknown): Uint8Array => (value instanceof Uint8Array ? value : asJson.encode(value)),
  fromBytes: <T>(bytes: Uint8Array): T => new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength) as T,
};

/**
 * A cache in this process's memory; values are kept as given, not copied. `reserveFile` reserves in this process's
 * private directory, and `setFile` reads the file and keeps its bytes as a `Uint8Array`.
 */
export class MemoryCache<T> extends RootCacheView<T> {
  constructor() {
    super(memoryBackend<T>());
  }
}

/** The backend of a {@link MemoryCache}; with options (a clock, a sweep interval) for tests, which build a view on it. */
export function memoryBackend<T>(options: LocalBackendOptions<T> = {}): LocalBackend<T, T> {
  return new LocalBackend<T, T>(new MemoryStore<T>(), keepAsGiven, options);
}
