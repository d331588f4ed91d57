import { join } from 'node:path';
import { describe, expect, onTestFinished, test } from 'vitest';
import { connect, type LockInfo, type RemoteCache, type StatusResult } from '../client/index.js';
import type { TransportName } from '../client/open-channel.js';
import type { GetHandle } from '../src/index.js';
import { eventually } from './conformance/support.js';
import { runHoard, startDaemonProcess } from './support/processes.js';
import { tempDir } from './support/temp-dir.js';

/** The --max-size of these daemons: 40 items of this file's values. */
const LIMIT_BYTES = 200_000;
const VALUE = 'v'.repeat(5_000);

/** A daemon process with `--max-size`, and `run` for `hoard --socket <its socket> ...`. */
async function daemonProcess(maxSize: string) {
  const dir = await tempDir('hh-');
  const daemon = await startDaemonProcess({ socketPath: join(dir, 's.sock'), dataDir: join(dir, 'data'), extra: ['--max-size', maxSize] });
  const run = (args: string[]) => runHoard(['--socket', daemon.socketPath, ...args]);
  return { ...daemon, run };
}

async function client<T = string>(socketPath: string, options: { clientName?: string; transport?: TransportName } = {}): Promise<RemoteCache<T>> {
  const cache = await connect<T>({ socketPath, autoStart: false, ...options });
  onTestFinished(() => cache.close());
  return cache;
}

async function present(cache: RemoteCache<string>, id: string): Promise<boolean> {
  await using got = await cache.get(id);
  return got.item !== null;
}

const ids = (prefix: string, count: number): string[] => Array.from({ length: count }, (_, n) => `${prefix}-${String(n).padStart(4, '0')}`);

describe('eviction in a daemon process', () => {
  test('never removes an item whose lock a client holds or waits for; hoard locks names them meanwhile', async () => {
    const { socketPath, run } = await daemonProcess(String(LIMIT_BYTES));
    const writer = await client(socketPath, { clientName: 'writer' });
    // Written first, so the least recently used: the recency bucket is a minute, and within one, key order.
    await writer.set('a0-read', VALUE);
    await writer.set('a1-recomputed', VALUE);
    const reader = await client(socketPath, { clientName: 'reader-tool' });
    const recomputer = await client(socketPath, { clientName: 'recompute-tool' });
    const waiter = await client(socketPath, { clientName: 'waiting-tool', transport: 'json' });
    const reading = await reader.get('a0-read');
    const recomputing = await recomputer.getset('a1-recomputed');
    const waiting = waiter.getset('a1-recomputed');
    waiting.catch(() => {});
    // Ordered by observable state: the waiter's getset is queued once the daemon counts one waiter.
    while ((await writer.status()).waiters < 1) await new Promise((resolve) => setImmediate(resolve));

    const fillers = ids('f', Math.ceil((3 * LIMIT_BYTES) / VALUE.length));
    for (const id of fillers) await writer.set(id, VALUE);
    const ours = (locks: LockInfo[]): LockInfo[] => locks.filter((lock) => lock.client !== 'hoard eviction');
    const expected = [
      { scope: [], id: 'a0-read', mode: 'shared', state: 'held', client: 'reader-tool', pid: process.pid, sinceMs: expect.any(Number) },
      { scope: [], id: 'a1-recomputed', mode: 'exclusive', state: 'held', client: 'recompute-tool', pid: process.pid, sinceMs: expect.any(Number) },
      { scope: [], id: 'a1-recomputed', mode: 'exclusive', state: 'waiting', client: 'waiting-tool', pid: process.pid, sinceMs: expect.any(Number) },
    ];
    // After the writes (the eviction may be under way), and once it has settled: the holders and the waiter, by name.
    expect(ours(JSON.parse((await run(['locks', '--json'])).stdout.toString()) as LockInfo[])).toEqual(expected);
    // Settled: within the limit, and no pass under way (gc, even a dry run, runs after the pass under way).
    await eventually(async () => {
      const status = await writer.status();
      return status.evictions > 0 && status.sizeBytes <= LIMIT_BYTES;
    }, 'the eviction back within the limit');
    await writer.gc({ dryRun: true });
    const settled = await writer.status();
    expect(settled.sizeBytes).toBeLessThanOrEqual(LIMIT_BYTES);
    expect(ours(JSON.parse((await run(['locks', '--json'])).stdout.toString()) as LockInfo[])).toEqual(expected);
    // The next oldest went: the locked ones were skipped, not waited for.
    expect(await present(writer, fillers[0]!)).toBe(false);
    expect(settled.evictions).toBeGreaterThanOrEqual(fillers.length - Math.floor(LIMIT_BYTES / VALUE.length));

    // Both are there: the item being read, and the one whose waiter, once the recomputation fails, gets it.
    expect(await present(writer, 'a0-read')).toBe(true);
    expect(await reading.item!.value()).toBe(VALUE);
    await reading.release();
    await recomputing.release();
    const waited = await waiting;
    expect(waited.item, 'a1-recomputed').not.toBeNull();
    expect(await waited.item!.value()).toBe(VALUE);
    await waited.release();
    expect(await present(writer, 'a0-read')).toBe(true);
    // Nothing is left held (releases from other connections arrive on their own schedule).
    await eventually(async () => (await writer.locks()).length === 0, 'every lock released');
  });

  test('hoard gc --dry-run removes nothing and says what hoard gc then removes, in a daemon over its limit', async () => {
    const { socketPath, run } = await daemonProcess(String(LIMIT_BYTES));
    const cache = await client(socketPath, { clientName: 'filler' });
    /** What the figures the two commands change were. */
    const figures = (status: StatusResult) => ({ items: status.items, sizeBytes: status.sizeBytes, evictions: status.evictions, expirations: status.expirations });

    // The daemon evicts as soon as it passes its limit (at open too): it stays over its limit only while the items
    // are locked. So every item is written and then held, some expiring; when all are let go, nothing is written
    // that would start an eviction, and the daemon stays over its limit until its timed sweep (every 10 s), or gc.
    // A first attempt that the timed sweep gets into is tried again with more items: the sweep comes every 10 s, and an
    // attempt takes a second or two, so it cannot get into the second one as well.
    for (let attempt = 0; ; attempt++) {
      const held: GetHandle<string>[] = [];
      let expiringHeld = 0;
      let expiresBy = 0;
      for (const id of ids(`r${attempt}`, Math.ceil((1.5 * LIMIT_BYTES) / VALUE.length))) {
        await cache.set(id, VALUE);
        held.push(await cache.get(id));
      }
      for (const id of ids(`t${attempt}`, 5)) {
        await cache.set(id, VALUE, { ttlMs: 100, staleMs: 0 });
        expiresBy = Date.now() + 100;
        const got = await cache.get(id);
        // Held before it expired (on a busy machine a read may come later: then it is removed as any expired read is).
        if (got.item !== null) expiringHeld++;
        held.push(got);
      }
      while (Date.now() <= expiresBy) await new Promise((resolve) => setTimeout(resolve, 5));
      await Promise.all(held.map((handle) => handle.release()));

      const before = await cache.status();
      expect(before.sizeBytes).toBeGreaterThan(LIMIT_BYTES);
      const dry = await run(['gc', '--dry-run']);
      expect(dry).toMatchObject({ code: 0, stderr: '' });
      const afterDry = await cache.status();
      const gc = await run(['gc']);
      expect(gc).toMatchObject({ code: 0, stderr: '' });
      const after = await cache.status();
      const wouldBe = /^would evict (\d+) items \(([^)]+)\) and remove (\d+) expired \(([^)]+)\); size would be (.+)\n$/.exec(dry.stdout.toString());
      const was = /^evicted (\d+) items \(([^)]+)\) and removed (\d+) expired \(([^)]+)\); size now (.+)\n$/.exec(gc.stdout.toString());
      expect(wouldBe, dry.stdout.toString()).not.toBeNull();
      expect(was, gc.stdout.toString()).not.toBeNull();
      const removedByGc = Number(was![1]) + Number(was![3]);
      const removedInAll = after.evictions + after.expirations - before.evictions - before.expirations;
      const sweptMeanwhile = afterDry.evictions !== before.evictions || afterDry.expirations !== before.expirations || removedInAll !== removedByGc;
      if (attempt === 0 && sweptMeanwhile) continue;

      // The dry run removed nothing; gc removed what it said, and the size is what it said it would be.
      expect(figures(afterDry)).toEqual(figures(before));
      expect(was!.slice(1)).toEqual(wouldBe!.slice(1));
      expect(Number(wouldBe![1])).toBeGreaterThan(0);
      expect(Number(wouldBe![3])).toBeGreaterThanOrEqual(expiringHeld);
      expect(after.evictions - before.evictions).toBe(Number(wouldBe![1]));
      expect(after.expirations - before.expirations).toBe(Number(wouldBe![3]));
      expect(after.sizeBytes).toBeLessThanOrEqual(LIMIT_BYTES * 0.9);
      expect(after.items).toBe(before.items - removedByGc);
      console.log(`gc in a daemon over its limit (attempt ${attempt + 1}): ${before.sizeBytes} B in ${before.items} items against ${LIMIT_BYTES} B; ${dry.stdout.toString().trim()}; ${gc.stdout.toString().trim()} (${after.sizeBytes} B)`);
      // Nothing left to do: a second dry run would remove nothing.
      expect((await run(['gc', '--dry-run'])).stdout.toString()).toMatch(/^would evict 0 items \(0 B\) and remove 0 expired \(0 B\)/);
      return;
    }
  });
});

test('stale-if-error through RemoteCache to a daemon process: staleMs 0 gives no stale item, a long one does, in both transports', async () => {
  const { socketPath } = await daemonProcess('unlimited');
  for (const transport of ['binary', 'json'] as const) {
    const cache = await client(socketPath, { transport });
    const ttlMs = transport === 'binary' ? 3 : 17;
    await cache.set('none', 'old none', { ttlMs, staleMs: 0 });
    await cache.set('kept', 'old kept', { ttlMs, staleMs: 3_600_000 });
    const expiresBy = Date.now() + ttlMs;
    while (Date.now() <= expiresBy) await new Promise((resolve) => setImmediate(resolve));
    {
      await using gs = await cache.getset('none');
      expect(gs.item).toBeNull();
      expect(gs.stale).toBeNull();
    }
    // A failed recomputation (released without a set) leaves the stale item for the next getset, which recomputes.
    for (let round = 0; round < 2; round++) {
      await using gs = await cache.getset('kept');
      expect(gs.item).toBeNull();
      expect(await gs.stale!.value()).toBe('old kept');
      if (round === 1) await gs.set('new kept');
    }
    await using fresh = await cache.getset('kept');
    expect(await fresh.item!.value()).toBe('new kept');
    expect(fresh.stale).toBeNull();
  }
});
