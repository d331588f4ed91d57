import { describe, expect, onTestFinished, test, vi } from 'vitest';
import { connectStdio } from '../client/index.js';
import { LevelCache } from '../src/index.js';
import { cacheConformance } from './conformance/index.js';
import { tempDir } from './support/temp-dir.js';

describe('RemoteCache over stdio', () => {
  test('close resolves once the private daemon has exited and let go of the data directory', async () => {
    const dataDir = await tempDir();
    for (let round = 0; round < 3; round++) {
      const cache = await connectStdio<string>({ dataDir });
      await cache.set(`round ${round}`, 'done');
      await cache.close();
      const direct = await LevelCache.open<string>(dataDir);
      await using got = await direct.get(`round ${round}`);
      expect(await got.item!.value()).toBe('done');
      await direct.close();
    }
  });

  test('a private daemon that cannot start says why', async () => {
    const dataDir = await tempDir();
    const holder = await LevelCache.open(dataDir);
    onTestFinished(() => holder.close());
    const stderr = vi.spyOn(process.stderr, 'write').mockImplementation(() => true);
    onTestFinished(() => stderr.mockRestore());
    const refused = await connectStdio({ dataDir }).catch((error: unknown) => error);
    expect(refused).toMatchObject({ code: 'CACHE_DAEMON_START_FAILED' });
    expect((refused as Error).message).toMatch(/holds the data directory/);
  });
});

for (const transport of ['binary', 'json'] as const) {
  cacheConformance(
    `RemoteCache over stdio (${transport} transport)`,
    async () => {
      const cache = await connectStdio<unknown>({ dataDir: await tempDir(), transport });
      onTestFinished(() => cache.close());
      return { cache, close: () => cache.close(), settle: async () => void (await cache.status()) };
    },
    { stores: true, values: 'json' },
  );
}
