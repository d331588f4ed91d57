import { onTestFinished } from 'vitest';
import { RootCacheView } from '../src/cache-view.js';
import { MemoryCache, NoOpCache } from '../src/index.js';
import { memoryBackend } from '../src/memory-cache.js';
import { cacheConformance, ManualClock } from './conformance/index.js';

// The public class reads the real clock (expiry tests use TTLs of a few milliseconds); the scoped one a clock the
// tests move, and reports its expirations.
cacheConformance(
  'MemoryCache',
  async () => {
    const cache = new MemoryCache<unknown>();
    onTestFinished(() => cache.close());
    return { cache, close: () => cache.close() };
  },
  { stores: true, values: 'as-given' },
);

cacheConformance(
  'MemoryCache in a scope, on a test clock',
  async () => {
    const clock = new ManualClock();
    const backend = memoryBackend<unknown>({ now: clock.now });
    const root = new RootCacheView<unknown>(backend);
    onTestFinished(() => root.close());
    return {
      cache: root.withScope('outer').withScope('inner'),
      close: () => root.close(),
      clock,
      expirations: async () => backend.counters().expiredItems,
    };
  },
  { stores: true, values: 'as-given', countsExpirations: true },
);

cacheConformance(
  'NoOpCache',
  async () => {
    const cache = new NoOpCache<unknown>();
    onTestFinished(() => cache.close());
    return { cache, close: () => cache.close() };
  },
  { stores: false, values: 'as-given' },
);
