import { stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, onTestFinished, test } from 'vitest';
import { openWithoutHandshake } from '../client/open-channel.js';
import { connect } from '../client/index.js';
import { isCacheError } from '../src/index.js';
import { Shutdown } from '../src/wire/protocol.js';
import { startTestDaemon } from './support/daemon.js';
import { autoStartPaths, CLIENT_MODULE, daemonPids, startModule, stopDaemonsAfterTest, waitForExit } from './support/processes.js';
import { tempDir } from './support/temp-dir.js';

describe('several processes, one daemon', () => {
  test('eight processes getset the same 50 keys: each value is computed exactly once', async () => {
    const { socketPath } = await startTestDaemon();
    const workers = Array.from({ length: 8 }, (_, n) =>
      startModule(
        `import { connect } from ${CLIENT_MODULE};
         const cache = await connect({ socketPath: process.argv.at(-1), autoStart: false, clientName: 'worker ${n}' });
         const keys = Array.from({ length: 50 }, (_, k) => 'key-' + k).sort(() => Math.random() - 0.5);
         await Promise.all(keys.map(async (key) => {
           const gs = await cache.getset(key);
           try {
             if (gs.item) {
               if ((await gs.item.value()) !== 'value of ' + key) throw new Error('wrong value for ' + key);
             } else {
               console.log('computed ' + key);
               await gs.set('value of ' + key);
             }
           } finally {
             await gs.release();
           }
         }));
         await cache.close();
         console.log('done');`,
        [socketPath],
      ),
    );
    expect(await Promise.all(workers.map((w) => w.exited))).toEqual(Array(8).fill(0));
    const computed = workers.flatMap((w) => w.lines.filter((line) => line.startsWith('computed ')));
    expect(computed).toHaveLength(50);
    expect(new Set(computed).size).toBe(50);
  });

  test('a process killed with SIGKILL while holding a getset: the next waiter gets the item within 2 s', async () => {
    const { socketPath } = await startTestDaemon();
    const observer = await connect({ socketPath, autoStart: false });
    onTestFinished(() => observer.close());
    const holder = startModule(
      `import { connect } from ${CLIENT_MODULE};
       const cache = await connect({ socketPath: process.argv.at(-1), autoStart: false });
       const gs = await cache.getset('contended');
       await gs.set('from the holder');
       console.log('holding');
       setInterval(() => {}, 1000);`,
      [socketPath],
    );
    await holder.line((line) => line === 'holding');
    const waiter = startModule(
      `import { connect } from ${CLIENT_MODULE};
       const cache = await connect({ socketPath: process.argv.at(-1), autoStart: false });
       console.log('waiting');
       const gs = await cache.getset('contended');
       console.log('granted ' + (await gs.item?.value()));
       await gs.release();
       await cache.close();`,
      [socketPath],
    );
    await waiter.line((line) => line === 'waiting');
    while ((await observer.status()).waiters === 0) await new Promise((resolve) => setImmediate(resolve));
    const killedAt = performance.now();
    holder.child.kill('SIGKILL');
    const granted = await waiter.line((line) => line.startsWith('granted'));
    expect(performance.now() - killedAt).toBeLessThan(2000);
    expect(granted).toBe('granted from the holder');
    expect(await waiter.exited).toBe(0);
    expect(await observer.status()).toMatchObject({ locksHeld: 0, waiters: 0, connections: 1 });
  });
});

describe('auto-start', () => {
  test('eight processes connect at once with no daemon: exactly one daemon starts and all eight work', async () => {
    const dir = await tempDir('hd-');
    const socketPath = join(dir, 'run', 's.sock');
    stopDaemonsAfterTest(socketPath);
    const clients = Array.from({ length: 8 }, (_, n) =>
      startModule(
        `import { connect } from ${CLIENT_MODULE};
         const [socketPath, dataDir] = process.argv.slice(-2);
         const cache = await connect({ socketPath, dataDir });
         await cache.set('client-${n}', ${n});
         const got = await cache.get('client-${n}');
         console.log('pid ' + (await cache.status()).pid + ' value ' + (await got.item.value()));
         await got.release();
         await cache.close();`,
        [socketPath, join(dir, 'data')],
      ),
    );
    expect(await Promise.all(clients.map((c) => c.exited))).toEqual(Array(8).fill(0));
    const reports = clients.map((c) => c.lines.at(-1)!);
    const pids = new Set(reports.map((line) => line.split(' ')[1]));
    expect(pids.size).toBe(1);
    expect(reports.map((line) => line.split(' ')[3])).toEqual(['0', '1', '2', '3', '4', '5', '6', '7']);
    expect(await daemonPids(socketPath)).toEqual([Number([...pids][0])]);
  });

  test('a daemon killed with SIGKILL leaves its socket; the next connect starts a new one with every value intact', async () => {
    const { socketPath, dataDir } = await autoStartPaths();
    const first = await connect<number>({ socketPath, dataDir });
    const values = Array.from({ length: 100 }, (_, n) => n);
    await Promise.all(values.map((n) => first.set(`k${n}`, n * n, { modified: n + 0.5 })));
    const held = await first.getset('held');
    const waitingOnDeadDaemon = expect(first.get('held')).rejects.toMatchObject({ code: 'CACHE_CONNECTION_LOST' });
    const { pid } = await first.status();
    process.kill(pid, 'SIGKILL');
    await waitForExit(pid);
    await waitingOnDeadDaemon;
    await expect(held.set(1)).rejects.toMatchObject({ code: 'CACHE_LOCK_NOT_HELD' });
    expect((await stat(socketPath)).isSocket()).toBe(true);

    // The same RemoteCache reconnects on its next call, starting a new daemon.
    const second = await first.status();
    expect(second.pid).not.toBe(pid);
    for (const n of values) {
      await using got = await first.get(`k${n}`);
      expect(got.item!.modified).toBe(n + 0.5);
      expect(await got.item!.value()).toBe(n * n);
    }
    await held.release();
    await first.close();
    expect(await daemonPids(socketPath)).toEqual([second.pid]);
  });

  test('when the daemon cannot start, connect says why within seconds', async () => {
    // A data directory that is a file: the client has no way to know, the daemon it starts finds out.
    const { socketPath, dir } = await autoStartPaths();
    const notADirectory = join(dir, 'data');
    await writeFile(notADirectory, 'not a directory\n');
    const startedAt = performance.now();
    const refused = await connect({ socketPath, dataDir: notADirectory }).catch((e: unknown) => e);
    expect(performance.now() - startedAt).toBeLessThan(5000);
    expect(refused).toMatchObject({ code: 'CACHE_DAEMON_START_FAILED' });
    expect((refused as Error).message).toContain(notADirectory);
    expect((refused as Error).message).toMatch(/daemon\.log/);
  });

  test('connecting while the daemon stops ends with a working connection, never a stray error', async () => {
    const { socketPath, dataDir } = await autoStartPaths();
    const first = await connect<string>({ socketPath, dataDir });
    await first.set('kept', 'yes');
    const { pid } = await first.status();
    await first.close();
    const stopper = await openWithoutHandshake(socketPath);
    const stopping = stopper.request(Shutdown, undefined);
    const connecting = Array.from({ length: 6 }, () => connect<string>({ socketPath, dataDir }));
    const settled = await Promise.allSettled([stopping, ...connecting]);
    expect(settled.map((result) => result.status)).toEqual(Array(7).fill('fulfilled'));
    await waitForExit(pid);
    for (const racer of await Promise.all(connecting)) {
      // A racer that reached the old daemon may learn on its first call that the connection is gone (documented);
      // the call after that reconnects. One that started the new daemon just uses it.
      const read = async (): Promise<unknown> => {
        await using got = await racer.get('kept');
        return await got.item?.value();
      };
      expect(await read().catch((error: unknown) => (isCacheError(error, 'CACHE_CONNECTION_LOST') ? read() : Promise.reject(error)))).toBe('yes');
      await racer.close();
    }
  });

  test('a daemon that accepts but never answers: connect gives up in time and close does not hang', async () => {
    const { socketPath, dataDir } = await autoStartPaths();
    const cache = await connect({ socketPath, dataDir });
    const { pid } = await cache.status();
    process.kill(pid, 'SIGSTOP');
    onTestFinished(() => void process.kill(pid, 'SIGCONT'));
    const startedAt = performance.now();
    const refused = await connect({ socketPath, startTimeoutMs: 1000 }).catch((error: unknown) => error);
    expect(refused).toMatchObject({ name: 'CacheError' });
    expect(performance.now() - startedAt).toBeLessThan(5000);
    await cache.close();
    process.kill(pid, 'SIGCONT');
  });

  test('without autoStart, connect fails at once when no daemon runs', async () => {
    const dir = await tempDir('hd-');
    await expect(connect({ socketPath: join(dir, 's.sock'), autoStart: false })).rejects.toMatchObject({ code: 'CACHE_NO_DAEMON' });
  });
});
