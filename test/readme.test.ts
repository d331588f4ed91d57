import { readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { expect, onTestFinished, test, vi } from 'vitest';
import { PROJECT_ROOT } from './support/child.js';
import { startTestDaemon } from './support/daemon.js';
import { tempDir } from './support/temp-dir.js';

/** The README's code blocks marked `<!-- example ... -->`, in order, with package imports pointed at the sources. */
async function examples(): Promise<string[]> {
  const readme = await readFile(join(PROJECT_ROOT, 'README.md'), 'utf8');
  return [...readme.matchAll(/<!-- example[^>]*-->\s*```ts\n([\s\S]*?)```/g)].map(([, code]) =>
    code!
      .replaceAll("from 'hoard-cache/client'", `from ${JSON.stringify(join(PROJECT_ROOT, 'client/index.ts'))}`)
      .replaceAll("from 'hoard-cache'", `from ${JSON.stringify(join(PROJECT_ROOT, 'src/index.ts'))}`),
  );
}

/** Runs one example as a module and returns what it logged. */
async function run(code: string, name: string): Promise<unknown[][]> {
  const file = join(PROJECT_ROOT, 'test', `.readme-example-${process.pid}-${name}.ts`);
  await writeFile(file, code);
  onTestFinished(() => rm(file, { force: true }));
  const log = vi.spyOn(console, 'log').mockImplementation(() => {});
  onTestFinished(() => log.mockRestore());
  await import(/* @vite-ignore */ file);
  return log.mock.calls;
}

test('the README has its examples', async () => {
  expect(await examples()).toHaveLength(2);
});

test('the README example of the Cache API runs as written', async () => {
  const [first] = await examples();
  vi.stubEnv('HOARD_EXAMPLE_DIR', join(await tempDir(), 'example'));
  onTestFinished(() => void vi.unstubAllEnvs());
  expect(await run(first!, 'api')).toEqual([[1700000000.5, '<h1>hi</h1>']]);
});

test('the README example of sharing a cache runs against a real daemon', async () => {
  const [, second] = await examples();
  const { socketPath } = await startTestDaemon();
  vi.stubEnv('HOARD_SOCKET', socketPath);
  onTestFinished(() => void vi.unstubAllEnvs());
  expect(await run(second!, 'sharing')).toEqual([[['main', 'render']]]);
});
