export type {
  Cache,
  CacheItem,
  ClosableCache,
  ExpiryOptions,
  GetHandle,
  GetNowOptions,
  GetOptions,
  GetSetHandle,
  GetSetOptions,
  ListedItem,
  ListOptions,
  ListPage,
  LockHandle,
  MissedGetSetHandle,
  ReservedFile,
  SetOptions,
} from './cache.js';
export type { CodecName } from './codecs.js';
export { CacheError, type CacheErrorCode, isCacheError } from './errors.js';
export type { GcReport } from './housekeeper.js';
export { type CacheUsage, LevelCache, type LevelCacheOptions } from './level-cache.js';
export { MemoryCache } from './memory-cache.js';
export { NoOpCache } from './no-op-cache.js';
export type { VerifyReport } from './store.js';
