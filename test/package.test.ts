import { access } from 'node:fs/promises';
import { join } from 'node:path';
import { expect, test } from 'vitest';
import { PROJECT_ROOT, runModule } from './support/child.js';

test('the package exports hoard-cache, hoard-cache/client and hoard-cache/daemon, each with types, and a hoard bin', async () => {
  const result = await runModule(
    `const api = await import('hoard-cache');
     const client = await import('hoard-cache/client');
     const daemon = await import('hoard-cache/daemon');
     const names = (m) => Object.keys(m).filter((k) => k !== 'default' && k !== '__esModule').sort();
     console.log(JSON.stringify([names(api), names(client), names(daemon)]));`,
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
