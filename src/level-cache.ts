import { flagOption } from './flag-option.js';
import { RootCacheView } from './cache-view.js';
import { type Codec, type CodecName, codecNamed } from './codecs.js';
import { codecAdapter } from './codec-adapter.js';
import type { GcReport } from './housekeeper.js';
import { LocalBackend } from './local-backend.js';
import { LevelStore, type LevelStoreOptions } from './level/level-store.js';
import type { EncodedValue, VerifyReport } from './store.js';

export interface LevelCacheOptions {
  /** How values become bytes; default `'json'`. */
  codec?: CodecName;
  /** The budget of the in-memory layer of recently used values, in bytes; 0 turns it off. Default 32 MiB. */
  memoryCacheBytes?: number;
  /**
   * The size limit, in counted bytes (each item's record and its file for a large value): past it, the least recently
   * used items are evicted in the background down to 90% of it. Default: the smaller of 10 GiB and 10% of the
   * filesystem that holds the directory; `Infinity` for none.
   */
  maxSizeBytes?: number;
}

/** Hooks for tests, not part of the public API: the clock of expiry and recency, and how often expired items are swept. */
export interface LevelCacheTestOptions extends LevelCacheOptions {
  now?: () => number;
  recencyBucketMs?: number;
  sweepIntervalMs?: number;
}

/** What a cache holds and has removed: its figures now, in total and by top-level scope. */
export interface CacheUsage {
  /** The counted bytes of every item. */
  readonly sizeBytes: number;
  /** The size limit in bytes; `null` when there is none. */
  readonly limitBytes: number | null;
  readonly items: number;
  /**
   * Bytes of replaced or removed values whose files wait for a handle on them to be released (not in `sizeBytes`;
   * eviction counts them).
   */
  readonly pinnedBytes: number;
  /** Items evicted (least recently used first, past the limit) since the cache opened. */
  readonly evictions: number;
  /** Items removed because they expired, since the cache opened. */
  readonly expirations: number;
  /** The same figures by top-level scope (the root scope's own items under `''`). */
  readonly scopes: Readonly<Record<string, { sizeBytes: number; items: number; evictions: number; expirations: number }>>;
}

/** A cache in a LevelDB directory, which it holds exclusively from `open` until `close`. */
export class LevelCache<T> extends RootCacheView<T> {
  /** The directory's real path. */
  readonly directory: string;
  readonly #backend: LocalBackend<T, EncodedValue>;

  private constructor(backend: LocalBackend<T, EncodedValue>, directory: string) {
    super(backend);
    this.#backend = backend;
    this.directory = directory;
  }

  /**
   * Opens the cache in `directory`, creating it (mode 0700) if needed. An existing directory that other users could
   * read or enter is made private (0700), with a process warning (`HOARD_DATA_DIR_NOT_PRIVATE`); the process's
   * umask is left alone, so the files LevelDB creates after opening take it, inside that private directory.
   * @throws CacheError `CACHE_LOCKED` when another process, or another open cache in this one, holds the directory.
   * @throws TypeError for a `maxSizeBytes` of 0 or less.
   */
  static async open<T = unknown>(directory: string, options: LevelCacheOptions = {}): Promise<LevelCache<T>> {
    if (typeof directory !== 'string' || directory === '') {
      throw new TypeError('LevelCache.open needs a directory path as a non-empty string.');
    }
    const { codec: codecName, memoryCacheBytes, maxSizeBytes, now, recencyBucketMs, sweepIntervalMs } = options as LevelCacheTestOptions;
    const codec: Codec<T> = codecNamed<T>(codecName ?? 'json');
    const storeOptions: LevelStoreOptions & Pick<LevelCacheTestOptions, 'maxSizeBytes' | 'now' | 'recencyBucketMs'> = {
      memoryCacheBytes,
      maxSizeBytes,
      now,
      recencyBucketMs,
    };
    const store = await LevelStore.open(directory, storeOptions);
    // Files in a private directory are out of others' reach whatever their modes: only the directory is worth a word.
    const exposed = store.loosePaths.find((loose) => loose.path === store.directory);
    if (exposed) {
      process.emitWarning(
        `Other users could read or enter the cache directory ${store.directory} (mode 0${exposed.mode.toString(8)}); ` +
          (exposed.madePrivate ? 'hoard has made it private (0700).' : 'hoard could not change it: make it private yourself (chmod 700).'),
        { code: 'HOARD_DATA_DIR_NOT_PRIVATE' },
      );
    }
    const backend = new LocalBackend(store, codecAdapter(codec, { sharedBytes: true }), { now, sweepIntervalMs });
    return new LevelCache<T>(backend, store.directory);
  }

  /**
   * The cache's figures now: counted size, limit and items, and the evictions and expirations since it opened, in
   * total and by top-level scope.
   * @throws CacheError `CACHE_CLOSED`.
   */
  usage(): CacheUsage {
    const usage = this.#backend.usage();
    const counters = this.#backend.counters();
    const scopes: Record<string, { sizeBytes: number; items: number; evictions: number; expirations: number }> = {};
    for (const [name, { bytes, items }] of usage?.scopes ?? []) scopes[name] = { sizeBytes: bytes, items, evictions: 0, expirations: 0 };
    for (const [name, removed] of counters.scopes) {
      const scope = (scopes[name] ??= { sizeBytes: 0, items: 0, evictions: 0, expirations: 0 });
      scope.evictions = removed.evictedItems;
      scope.expirations = removed.expiredItems;
    }
    return {
      sizeBytes: usage?.bytes ?? 0,
      limitBytes: usage?.limitBytes ?? null,
      items: usage?.items ?? 0,
      pinnedBytes: usage?.pinnedBytes ?? 0,
      evictions: counters.evictedItems,
      expirations: counters.expiredItems,
      scopes,
    };
  }

  /**
   * Removes the expired items, and above 90% of the size limit the least recently used ones down to it, now; with
   * `dryRun`, removes nothing and reports what it would remove. Items whose locks are held or waited for stay.
   * @throws CacheError `CACHE_CLOSED`; TypeError (as a rejection) for a `dryRun` that is not a boolean.
   */
  async gc(options: { dryRun?: boolean } = {}): Promise<GcReport> {
    return this.#backend.gc({ dryRun: flagOption(options, 'dryRun', 'gc') });
  }

  /**
   * Recounts the figures from the data and compares them with those kept, and finds files no item names; with
   * `fix` (default `false`), mends what differs and removes those files.
   * @throws CacheError `CACHE_CLOSED`; TypeError (as a rejection) for a `fix` that is not a boolean.
   */
  async verify(options: { fix?: boolean } = {}): Promise<VerifyReport> {
    const report = await this.#backend.verify({ fix: flagOption(options, 'fix', 'verify') });
    if (!report) throw new TypeError('This store cannot verify its figures.');
    return report;
  }
}
