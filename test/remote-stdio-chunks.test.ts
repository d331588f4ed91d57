import { onTestFinished } from 'vitest';
import { connectStdio } from '../client/index.js';
import { daemonEntry } from '../client/connect.js';
import type { CodecName } from '../src/index.js';
import { cacheConformance } from './conformance/index.js';
import { tempDir } from './support/temp-dir.js';

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
