import { execFileSync } from 'node:child_process';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, onTestFinished, test } from 'vitest';
import { connect, type RemoteCache } from '../client/index.js';
import { startDaemon } from '../daemon/index.js';
import { MAX_COUNTED_SCOPES } from '../src/housekeeper.js';
import { LevelCache } from '../src/level-cache.js';
import { LocalBackend } from '../src/local-backend.js';
import { MemoryStore } from '../src/memory-store.js';
import { scopeOf } from '../src/scope-path.js';
import { STATUS_MAX_SCOPES } from '../src/wire/protocol.js';
import { ManualClock } from './conformance/support.js';
import { runHoard } from './support/processes.js';
import { RawClient } from './support/raw-client.js';
import { tempDir } from './support/temp-dir.js';
import { fillDisk } from './support/full-disk.js';

/** A daemon in this process on a fresh socket (under `dataParent`, default a fresh directory), and a client of it. */
async function daemonAndClient<T = string>(options: { dataParent?: string; maxSizeBytes?: number } = {}) {
  const dir = await tempDir('hdm-');
  const socketPath = join(dir, 's.sock');
  const log: string[] = [];
  const daemon = await startDaemon({
    socketPath,
    dataDir: join(options.dataParent ?? dir, 'data'),
    idleTimeoutMs: 0,
    maxSizeBytes: options.maxSizeBytes ?? Infinity,
    log: (line) => log.push(line),
  });
  onTestFinished(() => daemon.close());
  const cache = await connect<T>({ socketPath, autoStart: false });
  onTestFinished(() => cache.close());
  return { socketPath, cache: cache as RemoteCache<T>, log };
}

describe('status stays bounded whatever the number of top-level scopes', () => {
  test('1,500 top-level scopes: status lists the 1,000 largest and sums the other 500; hoard status says so', async () => {
    const { socketPath, cache } = await daemonAndClient();
    // Scope sN holds one value of 100 + N bytes: the largest 1,000 are s500 to s1499.
    for (let n = 0; n < 1500; n += 100) {
      await Promise.all(Array.from({ length: 100 }, (_, k) => cache.withScope(`s${n + k}`).set('v', 'x'.repeat(100 + n + k))));
    }
    const status = await cache.status();
    expect(status.items).toBe(1500);
    expect(status.scopes).toHaveLength(STATUS_MAX_SCOPES);
    const listed = new Set(status.scopes.map((scope) => scope.name));
    for (let n = 500; n < 1500; n++) expect(listed.has(`s${n}`), `s${n}`).toBe(true);
    const names = status.scopes.map((scope) => scope.name);
    expect(names).toEqual([...names].sort());
    const listedBytes = status.scopes.reduce((sum, scope) => sum + scope.sizeBytes, 0);
    expect(status.otherScopes).toEqual({ count: 500, sizeBytes: status.sizeBytes - listedBytes, items: 500 });
    const text = await runHoard(['--socket', socketPath, 'status']);
    expect(text.code).toBe(0);
    expect(text.stdout.toString()).toMatch(/\nand 500 more scopes \(\S+ \S+, 500 items\)\n$/);
  });

  test('removal counters are kept for at most 10,000 top-level scope names; the totals count every removal', async () => {
    const clock = new ManualClock();
    const backend = new LocalBackend<string, string>(new MemoryStore<string>(), { encode: (v) => v, decode: (v) => v }, { now: clock.now, sweepIntervalMs: 1e9 });
    onTestFinished(() => backend.close());
    const names = MAX_COUNTED_SCOPES + 50;
    for (let n = 0; n < names; n++) await backend.set(scopeOf([`s${n}`]), 'v', 'x', { modified: 0, ttlMs: 1 });
    clock.advance(10);
    const report = await backend.gc({ dryRun: false });
    expect(report.expiredItems).toBe(names);
    const counters = backend.counters();
    expect(counters.expiredItems).toBe(names);
    expect(counters.scopes.size).toBe(MAX_COUNTED_SCOPES);
  });
});

describe('background housekeeping failures', () => {
  // A small tmpfs is the full disk; mounting one needs root, which CI has.
  test.runIf(process.getuid?.() === 0)('on a full disk, removals of expired items fail: logged once a minute, counted in status', async () => {
    const dir = await tempDir('hdm-');
    const disk = join(dir, 'disk');
    await mkdir(disk);
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=2m', 'tmpfs', disk]);
    onTestFinished(() => void execFileSync('umount', ['-l', disk]));
    const { cache, log } = await daemonAndClient({ dataParent: disk });
    const ids = Array.from({ length: 300 }, (_, n) => `e${n}`);
    for (const id of ids) await cache.set(id, 'x'.repeat(100), { ttlMs: 1 });
    fillDisk(join(disk, 'filler'));
    // Each round of reads finds the expired items and queues their removal, a background pass that writes a batch.
    let status = await cache.status();
    for (let round = 0; round < 100 && status.housekeepingFailures < 2; round++) {
      for (const id of ids) {
        await using got = await cache.get(id);
        expect(got.item).toBeNull();
      }
      status = await cache.status();
    }
    expect(status.housekeepingFailures).toBeGreaterThanOrEqual(2);
    const lines = log.filter((line) => line.includes('housekeeping failed'));
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/no space left on device/i);
  });
});

describe('gc and verify options', () => {
  test('LevelCache: verify mends nothing unless asked; non-boolean dryRun or fix is a TypeError (a rejection)', async () => {
    const cache = await LevelCache.open<string>(await tempDir('hdm-'));
    onTestFinished(() => cache.close());
    await cache.set('k', 'v');
    expect(await cache.verify()).toMatchObject({ fixed: false });
    expect(await cache.verify({ fix: true })).toMatchObject({ fixed: true });
    const gc = cache.gc({ dryRun: 'no' } as never);
    await expect(gc).rejects.toThrow(TypeError);
    await expect(cache.verify({ fix: 'yes' } as never)).rejects.toThrow(TypeError);
    await expect(cache.gc(null as never)).rejects.toThrow(TypeError);
  });

  test('RemoteCache: verify mends nothing unless asked; bad options reject with a TypeError, sending nothing', async () => {
    const { cache } = await daemonAndClient();
    await cache.set('k', 'v');
    expect(await cache.verify()).toMatchObject({ fixed: false });
    expect(await cache.verify({ fix: true })).toMatchObject({ fixed: true });
    // A dry run asked for as a string removes nothing: the call is refused before it is sent.
    await expect(cache.gc({ dryRun: 'yes' } as never)).rejects.toThrow(TypeError);
    await expect(cache.verify({ fix: 1 } as never)).rejects.toThrow(TypeError);
    // Refusals come as rejections, never thrown at the call.
    let status: Promise<unknown> | undefined;
    expect(() => (status = cache.status(null as never))).not.toThrow();
    await expect(status).rejects.toThrow(TypeError);
    expect((await cache.status()).items).toBe(1);
  });

  test('daemon/verify without fix only reports; non-boolean fix or dryRun is CACHE_INVALID_PARAMS', async () => {
    const { socketPath } = await daemonAndClient();
    const raw = await RawClient.open(socketPath);
    onTestFinished(() => void raw.socket.destroy());
    await raw.initialize();
    expect(await raw.request('daemon/verify', {})).toMatchObject({ result: { fixed: false } });
    expect(await raw.request('daemon/verify')).toMatchObject({ result: { fixed: false } });
    expect(await raw.request('daemon/verify', { fix: true })).toMatchObject({ result: { fixed: true } });
    expect(await raw.request('daemon/verify', { fix: 'yes' })).toMatchObject({ error: { data: { code: 'CACHE_INVALID_PARAMS' } } });
    expect(await raw.request('daemon/gc', { dryRun: 'yes' })).toMatchObject({ error: { data: { code: 'CACHE_INVALID_PARAMS' } } });
  });
});
