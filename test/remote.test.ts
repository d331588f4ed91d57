import { onTestFinished } from 'vitest';
import { connect, connectStdio } from '../client/index.js';
import type { CodecName } from '../src/index.js';
import { cacheConformance } from './conformance/index.js';
import { startTestDaemon } from './support/daemon.js';
import { tempDir } from './support/temp-dir.js';

for (const codec of ['json', 'binary', 'structured'] as CodecName[]) {
  cacheConformance(
    `RemoteCache over a Unix socket (${codec})`,
    async () => {
      const { socketPath } = await startTestDaemon();
      const cache = await connect<unknown>({ socketPath, codec, autoStart: false });
      onTestFinished(() => cache.close());
      return { cache, close: () => cache.close(), settle: async () => void (await cache.status()) };
    },
    { stores: true, values: codec },
  );
}

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

cacheConformance(
  'RemoteCache over stdio',
  async () => {
    const cache = await connectStdio<unknown>({ dataDir: await tempDir() });
    onTestFinished(() => cache.close());
    return { cache, close: () => cache.close(), settle: async () => void (await cache.status()) };
  },
  { stores: true, values: 'json' },
);
