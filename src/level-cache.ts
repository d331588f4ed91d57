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
   * Opens the cache in `directory`, creating it (mode 0700) if needed. An existing directory that other users could
   * read or enter is made private (0700), with a process warning (`HOARD_DATA_DIR_NOT_PRIVATE`); the process's
   * umask is left alone, so the files LevelDB creates after opening take it, inside that private directory.
   * @throws CacheError `CACHE_LOCKED` when another process, or another open cache in this one, holds the directory.
   */
  static async open<T = unknown>(directory: string, options: LevelCacheOptions = {}): Promise<LevelCache<T>> {
    if (typeof directory !== 'string' || directory === '') {
      throw new TypeError('LevelCache.open needs a directory path as a non-empty string.');
    }
    const codec = codecNamed<T>(options.codec ?? 'json');
    const store = await LevelStore.open(directory, { memoryCacheBytes: options.memoryCacheBytes });
    // Files in a private directory are out of others' reach whatever their modes: only the directory is worth a word.
    const exposed = store.loosePaths.find((loose) => loose.path === store.directory);
    if (exposed) {
      process.emitWarning(
        `Other users could read or enter the cache directory ${store.directory} (mode 0${exposed.mode.toString(8)}); ` +
          (exposed.madePrivate ? 'hoard has made it private (0700).' : 'hoard could not change it: make it private yourself (chmod 700).'),
        { code: 'HOARD_DATA_DIR_NOT_PRIVATE' },
      );
    }
    return new LevelCache<T>(store, codec);
  }
}
