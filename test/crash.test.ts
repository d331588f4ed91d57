import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, onTestFinished, test } from 'vitest';
import { connect, type RemoteCache } from '../client/index.js';
import { isCacheError } from '../src/index.js';
import { CLIENT_MODULE, runHoard, startDaemonProcess, startModule, waitForExit } from './support/processes.js';
import { tempDir } from './support/temp-dir.js';

const KILLS = 20;
const KEYS = 40;
const IN_FLIGHT = 16;
/** Keys k0 to k9 take values of 40 KB, which the daemon keeps in files of their own. */
const LARGE_KEYS = 10;
const PAD = 'x'.repeat(40_000);

type Value = { n: number; pad?: string };
const valueFor = (n: number): Value => (n % KEYS < LARGE_KEYS ? { n, pad: PAD } : { n });

describe('crash durability', () => {
  test(`every acknowledged write survives ${KILLS} SIGKILLs of the daemon at random moments`, async () => {
    const dir = await tempDir('hd-');
    const socketPath = join(dir, 's.sock');
    const dataDir = join(dir, 'data');
    /** The highest value acknowledged for each key; values only grow, so a later write may only raise it. */
    const acknowledged = new Map<string, number>();
    let next = 0;
    let checked = 0;
    for (let round = 0; round < KILLS; round++) {
      const daemon = await startDaemonProcess({ socketPath, dataDir });
      const cache = await connect<Value>({ socketPath, autoStart: false });

      // Every value already acknowledged is there after the restart, whole, with its modified time.
      for (const [key, value] of acknowledged) {
        await using got = await cache.get(key);
        expect(got.item, key).not.toBeNull();
        const stored = await got.item!.value();
        expect(stored).toEqual(valueFor(stored.n));
        expect(stored.n).toBeGreaterThanOrEqual(value);
        expect(got.item!.modified).toBe(stored.n + 0.25);
        checked++;
      }

      let stop = false;
      const writer = async (): Promise<void> => {
        while (!stop) {
          const value = next++;
          const key = `k${value % KEYS}`;
          try {
            await cache.set(key, valueFor(value), { modified: value + 0.25 });
          } catch (error) {
            // The daemon is gone: this call was cut off, or (after an answered one) found no daemon to reconnect to.
            if (isCacheError(error, 'CACHE_CONNECTION_LOST') || isCacheError(error, 'CACHE_NO_DAEMON')) return;
            throw error;
          }
          if (value > (acknowledged.get(key) ?? -1)) acknowledged.set(key, value);
          if (++acknowledgedThisRound === 2 * KEYS) warmedUp();
        }
      };
      let acknowledgedThisRound = 0;
      let warmedUp!: () => void;
      const warm = new Promise<void>((resolve) => (warmedUp = resolve));
      const writers = Array.from({ length: IN_FLIGHT }, writer);
      // Once writes flow, the kill lands at a random moment while more are in flight.
      await warm;
      await new Promise((resolve) => setTimeout(resolve, Math.random() * 40));
      daemon.child.kill('SIGKILL');
      await daemon.exited;
      await Promise.all(writers);
      stop = true;
      await cache.close();
    }
    expect(acknowledged.size).toBe(KEYS);
    expect(checked).toBe(KEYS * (KILLS - 1));
    // Files written for values whose records the kills cut off are garbage: the next daemon's sweep removes
    // them, and a clean stop waits for it, leaving the one file of each large value.
    const last = await startDaemonProcess({ socketPath, dataDir });
    expect((await runHoard(['--socket', socketPath, 'stop'])).code).toBe(0);
    await last.exited;
    const files = await Promise.all((await readdir(join(dataDir, 'blobs'))).map((sub) => readdir(join(dataDir, 'blobs', sub))));
    expect(files.flat()).toHaveLength(LARGE_KEYS);
    console.log(`crash durability: ${KILLS} kills, ${next} writes sent, ${checked} acknowledged values checked after restarts`);
    // Each round starts a daemon process and waits for it: on a busy machine that alone can take seconds.
  }, (KILLS + 1) * 10_000);
});

describe('client crashes', () => {
  /** What `hoard status --json` says. */
  async function status(socketPath: string): Promise<{ locksHeld: number; waiters: number; connections: number }> {
    const result = await runHoard(['--socket', socketPath, 'status', '--json']);
    expect(result.code).toBe(0);
    return JSON.parse(result.stdout.toString()) as { locksHeld: number; waiters: number; connections: number };
  }

  test('clients killed while holding get handles, holding getset sessions and queued leave no lock or waiter', async () => {
    const dir = await tempDir('hd-');
    const socketPath = join(dir, 's.sock');
    await startDaemonProcess({ socketPath, dataDir: join(dir, 'data') });
    const survivor: RemoteCache<string> = await connect<string>({ socketPath, autoStart: false });
    onTestFinished(() => survivor.close());
    const blocker = await survivor.getset('blocked');

    const victim = (what: string): ReturnType<typeof startModule> =>
      startModule(
        `import { connect } from ${CLIENT_MODULE};
         const cache = await connect({ socketPath: process.argv.at(-1), autoStart: false });
         ${what}
         console.log('ready');
         setInterval(() => {}, 1000);`,
        [socketPath],
      );
    const readers = victim(`for (const id of ['a', 'b', 'c']) await cache.get(id);`);
    const writer = victim(`await cache.getset('d'); await cache.getset('e');`);
    const queued = victim(`cache.get('blocked'); cache.getset('blocked'); cache.set('blocked', 'x'); cache.withScope('s').clear(); await cache.status();`);
    await Promise.all([readers, writer, queued].map((child) => child.line((line) => line === 'ready')));
    expect(await status(socketPath)).toMatchObject({ locksHeld: 6, waiters: 3, connections: 5 });

    for (const child of [readers, writer, queued]) {
      child.child.kill('SIGKILL');
      await waitForExit(child.child.pid!);
    }
    // The daemon learns of the closed connections on its own schedule: until then it rightly still counts them.
    while ((await survivor.status()).connections > 1) await new Promise((resolve) => setImmediate(resolve));
    const after = await status(socketPath);
    expect(after).toMatchObject({ locksHeld: 1, waiters: 0, connections: 2 });
    // The others proceed: every item the victims held is free.
    for (const id of ['a', 'b', 'c', 'd', 'e']) {
      const attempt = await survivor.getset(id, { wait: false });
      expect(attempt.set, id).not.toBeNull();
      await attempt.release();
    }
    await blocker.release();
    await survivor.withScope('s').clear();
    expect(await status(socketPath)).toMatchObject({ locksHeld: 0, waiters: 0 });
  });
});
