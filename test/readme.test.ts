import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { expect, onTestFinished, test, vi } from 'vitest';
import { PROJECT_ROOT } from './support/child.js';
import { tempDir } from './support/temp-dir.js';

test('the README example runs as written', async () => {
  const readme = await readFile(join(PROJECT_ROOT, 'README.md'), 'utf8');
  const block = /<!-- example[^>]*-->\s*```ts\n([\s\S]*?)```/.exec(readme)?.[1];
  expect(block).toBeDefined();
  const dir = await tempDir();
  const file = join(PROJECT_ROOT, 'test', `.readme-example-${process.pid}.ts`);
  await writeFile(file, block!.replaceAll("from 'hoard'", `from ${JSON.stringify(join(PROJECT_ROOT, 'src/index.ts'))}`));
  onTestFinished(() => import('node:fs/promises').then(({ rm }) => rm(file, { force: true })));
  const log = vi.spyOn(console, 'log').mockImplementation(() => {});
  onTestFinished(() => log.mockRestore());
  vi.stubEnv('HOARD_EXAMPLE_DIR', join(dir, 'example'));
  onTestFinished(() => void vi.unstubAllEnvs());
  await import(/* @vite-ignore */ file);
  expect(log).toHaveBeenCalledWith(1700000000.5, '<h1>hi</h1>');
});
