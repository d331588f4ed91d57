import { access } from 'node:fs/promises';
import { join } from 'node:path';
import { expect, test } from 'vitest';
import { PROJECT_ROOT, runModule } from './support/child.js';

test('the package exports hoard-cache, hoard-cache/client and hoard-cache/daemon, each with types, and a hoard bin', async () => {
  const result = await runModule(
    `const api = await import('hoard-cache');
     const client = await import('hoard-cache/client');
     const daemon = await import('hoard-cache/daemon');
     console.log(JSON.stringify([Object.keys(api).sort(), Object.keys(client).sort(), Object.keys(daemon).sort()]));`,
  );
  expect(result.stderr).toBe('');
  expect(JSON.parse(result.stdout)).toEqual([
    ['CacheError', 'LevelCache', 'MemoryCache', 'NoOpCache', 'isCacheError'],
    ['RemoteCache', 'connect', 'connectStdio'],
    ['MAX_SOCKET_PATH_BYTES', 'defaultDataDir', 'defaultSocketPath', 'startDaemon'],
  ]);
  for (const types of ['dist/src/index.d.ts', 'dist/client/index.d.ts', 'dist/daemon/index.d.ts', 'dist/client/bin.js']) {
    await access(join(PROJECT_ROOT, types));
  }
});
