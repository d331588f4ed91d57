import { RootCacheView } from './cache-view.js';
import { type Codec, type CodecName, codecNamed } from './codecs.js';
import { CacheError } from './errors.js';
import { LocalBackend, type ValueAdapter } from './local-backend.js';
import { type EncodedValue, LevelStore } from './level-store.js';

export interface LevelCacheOptions {
  /** How values become bytes; default `'json'`. */
  codec?: CodecName;
  /** The budget of the in-memory layer of recently used values, in bytes; 0 turns it off. Default 32 MiB. */
  memoryCacheBytes?: number;
}

/**
 * A copy of `bytes` as a plain `Uint8Array`; a small one is cut from Node's shared buffer pool, which costs far
 * less than an `ArrayBuffer` of its own.
 */
function copyOf(bytes: Uint8Array): Uint8Array {
  const copy = Buffer.allocUnsafe(bytes.byteLength);
  copy.set(bytes);
  return new Uint8Array(copy.buffer, copy.byteOffset, copy.byteLength);
}

/**
 * Encodes with `codec` and refuses to decode a value stored with another encoding. With `sharedBytes` (the bytes
 * to decode are the store's own, which later reads return too), a value that would share their memory is decoded
 * from a copy, so that changing it changes nothing stored.
 */
export function codecAdapter<T>(codec: Codec<T>, options: { sharedBytes?: boolean } = {}): ValueAdapter<T, EncodedValue> {
  const copy = (options.sharedBytes ?? false) && (codec.decodesToView ?? false);
  return {
    encode: (value) => ({ encoding: codec.name, bytes: codec.encode(value) }),
    decode: ({ encoding, bytes }) => {
      if (encoding !== codec.name) {
        throw new CacheError(
          'CACHE_ENCODING_MISMATCH',
          `This value was stored with the ${encoding} encoding, but this cache reads ${codec.name}.`,
        );
      }
      return codec.decode(copy ? copyOf(bytes) : bytes);
    },
  };
}

/** A cache in a LevelDB directory, which it holds exclusively from `open` until `close`. */
export class LevelCache<T> extends RootCacheView<T> {
  /** The directory's real path. */
  readonly directory: string;

  private constructor(store: LevelStore, codec: Codec<T>) {
    super(new LocalBackend(store, codecAdapter(codec, { sharedBytes: true })));
    this.directory = store.directory;
  }

  /**
   * Opens the cache in `directory`, creating it if needed.
   * @throws CacheError `CACHE_LOCKED` when another process, or another open cache in this one, holds the directory.
   */
  static async open<T = unknown>(directory: string, options: LevelCacheOptions = {}): Promise<LevelCache<T>> {
    if (typeof directory !== 'string' || directory === '') {
      throw new TypeError('LevelCache.open needs a directory path as a non-empty string.');
    }
    const codec = codecNamed<T>(options.codec ?? 'json');
    return new LevelCache<T>(await LevelStore.open(directory, { memoryCacheBytes: options.memoryCacheBytes }), codec);
  }
}
