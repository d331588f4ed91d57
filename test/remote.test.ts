import { onTestFinished } from 'vitest';
import { connect } from '../client/index.js';
import type { CodecName } from '../src/index.js';
import { cacheConformance } from './conformance/index.js';
import { startTestDaemon } from './support/daemon.js';

// The same suite over stdio is in remote-stdio.test.ts and remote-stdio-chunks.test.ts: three files, so that the system
// lane's two workers can run them beside each other.

/** The daemon's count of expired items removed (daemon/status `expirations`, protocol 2). */
async function expirations(cache: { status(): Promise<object> }): Promise<number> {
  return ((await cache.status()) as { expirations?: number }).expirations ?? Number.NaN;
}

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
