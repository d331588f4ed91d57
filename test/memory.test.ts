import { onTestFinished } from 'vitest';
import { MemoryCache, NoOpCache } from '../src/index.js';
import { cacheConformance } from './conformance/index.js';

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
  'MemoryCache in a scope',
  async () => {
    const root = new MemoryCache<unknown>();
    onTestFinished(() => root.close());
    return { cache: root.withScope('outer').withScope('inner'), close: () => root.close() };
  },
  { stores: true, values: 'as-given' },
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
