import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { symlink } from 'node:fs/promises';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { describe, expect, onTestFinished, test } from 'vitest';
import { LevelCache } from '../src/index.js';
import { openFromAnotherProcess, PROJECT_ROOT } from './support/child.js';
import { tempDir } from './support/temp-dir.js';

// LevelDB allows one process at a time in a directory: these tests check that with other processes and threads.
describe('LevelCache holds its directory exclusively', () => {
  test('a second open in this process is refused with CACHE_LOCKED and leaves the first holding the lock', async () => {
    const dir = await tempDir();
    const first = await LevelCache.open<string>(dir);
    onTestFinished(() => first.close());
    const refused = await LevelCache.open<string>(dir).catch((error: unknown) => error);
    expect(refused).toMatchObject({ code: 'CACHE_LOCKED' });
    expect((refused as Error).message).toMatch(/daemon/);
    // Through a link to the same directory as well.
    const link = join(await tempDir(), 'link');
    await symlink(dir, link);
    await expect(LevelCache.open<string>(link)).rejects.toMatchObject({ code: 'CACHE_LOCKED' });

    expect(await openFromAnotherProcess(dir)).toBe('LEVEL_LOCKED');
    await first.set('still', 'works');
    await using got = await first.get('still');
    expect(await got.item!.value()).toBe('works');
  });

  test('two opens of one directory started together in this process: one opens, the other is refused, the lock holds', async () => {
    // The race is in the awaits before LevelDB's open: several rounds, each with its own directory.
    for (let round = 0; round < 5; round++) {
      const dir = await tempDir();
      const outcomes = await Promise.allSettled([LevelCache.open<string>(dir), LevelCache.open<string>(dir), LevelCache.open<string>(dir)]);
      const opened = outcomes.flatMap((outcome) => (outcome.status === 'fulfilled' ? [outcome.value] : []));
      for (const cache of opened) onTestFinished(() => cache.close());
      expect(opened).toHaveLength(1);
      expect(outcomes.filter((outcome) => outcome.status === 'rejected')).toMatchObject([{ reason: { code: 'CACHE_LOCKED' } }, { reason: { code: 'CACHE_LOCKED' } }]);
      expect(await openFromAnotherProcess(dir)).toBe('LEVEL_LOCKED');
    }
  });

  test('a directory another process holds is refused with CACHE_LOCKED', async () => {
    const dir = await tempDir();
    const holder = spawn(
      process.execPath,
      ['--input-type=module', '-e', `import { Level } from 'level'; await new Level(process.argv.at(-1)).open(); console.log('open'); setInterval(() => {}, 1000);`, '--', dir],
      { cwd: PROJECT_ROOT, stdio: ['ignore', 'pipe', 'inherit'] },
    );
    onTestFinished(() => void holder.kill('SIGKILL'));
    await once(holder.stdout!, 'data');
    await expect(LevelCache.open(dir)).rejects.toMatchObject({ code: 'CACHE_LOCKED' });
    holder.kill('SIGKILL');
    await once(holder, 'exit');
    const reopened = await LevelCache.open(dir);
    await reopened.close();
  });

  test('a directory a worker thread of this process holds is refused, and the worker keeps its lock', async () => {
    const dir = await tempDir();
    const worker = new Worker(
      `const { Level } = require('level');
       const { parentPort, workerData } = require('node:worker_threads');
       const db = new Level(workerData);
       db.open().then(() => parentPort.postMessage('open'));
       parentPort.on('message', () => db.close().then(() => parentPort.postMessage('closed')));`,
      { eval: true, workerData: dir },
    );
    onTestFinished(async () => void (await worker.terminate()));
    expect(await once(worker, 'message')).toEqual(['open']);
    await expect(LevelCache.open(dir)).rejects.toMatchObject({ code: 'CACHE_LOCKED' });
    expect(await openFromAnotherProcess(dir)).toBe('LEVEL_LOCKED');
    worker.postMessage('close');
    expect(await once(worker, 'message')).toEqual(['closed']);
    const reopened = await LevelCache.open(dir);
    await reopened.close();
  });

  test('after close the directory can be opened again, here or elsewhere', async () => {
    const dir = await tempDir();
    await (await LevelCache.open(dir)).close();
    expect(await openFromAnotherProcess(dir)).toBe('opened');
    const again = await LevelCache.open(dir);
    await again.close();
  });
});
