import { describe, expect, onTestFinished, test, vi } from 'vitest';
import { connect, connectStdio } from '../client/index.js';
import { daemonEntry } from '../client/connect.js';
import { type CodecName, LevelCache } from '../src/index.js';
import { cacheConformance } from './conformance/index.js';
import { startTestDaemon } from './support/daemon.js';

/** The daemon's count of expired items removed (daemon/status `expirations`, protocol 2). */
async function expirations(cache: { status(): Promise<object> }): Promise<number> {
  return ((await cache.status()) as { expirations?: number }).expirations ?? Number.NaN;
}
import { tempDir } from './support/temp-dir.js';

for (const codec of ['json', 'binary', 'structured'] as CodecName[]) {
  cacheConformance(
    `RemoteCache over a Unix socket (${codec})`,
    async () => {
      const { socketPath } = await startTestDaemon();
      const cache = await connect<unknown>({ socketPath, codec, autoStart: false });
      onTestFinished(() => cache.close());
      return { cache, close: () => cache.close(), settle: async () => void (await cache.status()), expirations: () => expirations(cache) };
    },
    { stores: true, values: codec, countsExpirations: true },
  );
}

// The runs above read values kept in files (32 KiB and more) by reference, the default; this one takes their bytes.
cacheConformance(
  'RemoteCache over a Unix socket (binary, references off)',
  async () => {
    const { socketPath } = await startTestDaemon();
    const cache = await connect<unknown>({ socketPath, codec: 'binary', autoStart: false, references: false });
    onTestFinished(() => cache.close());
    return { cache, close: () => cache.close(), settle: async () => void (await cache.status()), expirations: () => expirations(cache) };
  },
  { stores: true, values: 'binary', countsExpirations: true },
);

cacheConformance(
  'RemoteCache over a Unix socket (JSON transport)',
  async () => {
    const { socketPath } = await startTestDaemon();
    const cache = await connect<unknown>({ socketPath, autoStart: false, transport: 'json' });
    onTestFinished(() => cache.close());
    return { cache, close: () => cache.close(), settle: async () => void (await cache.status()) };
  },
  { stores: true, values: 'json' },
);

cacheConformance(
  'RemoteCache over a Unix socket, in a scope',
  async () => {
    const { socketPath } = await startTestDaemon();
    const root = await connect<unknown>({ socketPath, autoStart: false });
    onTestFinished(() => root.close());
    return { cache: root.withScope('outer'), close: () => root.close(), settle: async () => void (await root.status()) };
  },
  { stores: true, values: 'json' },
);

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

// Over stdio without references, as from a container: values over 16 KiB (here) come as chunked items, read with
// cache/readChunk; the conformance suite's values of 100 KB and 1 MiB then go by chunks. One codec runs the whole
// suite (it takes minutes); test/large-values.test.ts reads chunked values in every codec.
for (const codec of ['binary'] as CodecName[]) {
  cacheConformance(
    `RemoteCache over stdio, reading in chunks (${codec})`,
    async () => {
      const command = [process.execPath, daemonEntry(), '--chunk-max-bytes', '16KiB'];
      const cache = await connectStdio<unknown>({ dataDir: await tempDir(), codec, references: false, daemon: { command } });
      onTestFinished(() => cache.close());
      return { cache, close: () => cache.close(), settle: async () => void (await cache.status()) };
    },
    { stores: true, values: codec },
  );
}
