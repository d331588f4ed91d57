import { onTestFinished } from 'vitest';
import { type CodecName, LevelCache } from '../src/index.js';
import { cacheConformance } from './conformance/index.js';
import { tempDir } from './support/temp-dir.js';

for (const codec of ['json', 'binary', 'structured'] as CodecName[]) {
  cacheConformance(
    `LevelCache (${codec})`,
    async () => {
      const cache = await LevelCache.open<unknown>(await tempDir(), { codec });
      onTestFinished(() => cache.close());
      return { cache, close: () => cache.close() };
    },
    { stores: true, values: codec },
  );
}

cacheConformance(
  'LevelCache (json) in a scope',
  async () => {
    const root = await LevelCache.open<unknown>(await tempDir());
    onTestFinished(() => root.close());
    return { cache: root.withScope('outer'), close: () => root.close() };
  },
  { stores: true, values: 'json' },
);
