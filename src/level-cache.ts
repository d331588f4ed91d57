import { RootCacheView } from './cache-view.js';
import { type Codec, type CodecName, codecNamed } from './codecs.js';
import { codecAdapter } from './codec-adapter.js';
import { LocalBackend } from './local-backend.js';
import { LevelStore } from './level/level-store.js';

export interface LevelCacheOptions {
  /** How values become bytes; default `'json'`. */
  codec?: CodecName;
  /** The budget of the in-memory layer of recently used values, in bytes; 0 turns it off. Default 32 MiB. */
  memoryCacheBytes?: number;
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
