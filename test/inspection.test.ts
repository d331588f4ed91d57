import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { describe, expect, onTestFinished, test } from 'vitest';
import { connect } from '../client/index.js';
import type { TransportName } from '../client/open-channel.js';
import { BIN, runHoard, startDaemonProcess } from './support/processes.js';
import { RawClient } from './support/raw-client.js';
import { tempDir } from './support/temp-dir.js';

/** A daemon process on a fresh socket and data directory, with `run` for `hoard --socket <its socket> ...`. */
async function daemonProcess(extra: string[] = []) {
  const dir = await tempDir('hi-');
  const daemon = await startDaemonProcess({ socketPath: join(dir, 's.sock'), dataDir: join(dir, 'data'), extra });
  const run = (args: string[]) => runHoard(['--socket', daemon.socketPath, ...args]);
  return { ...daemon, run };
}

async function client<T = string>(socketPath: string, options: { clientName?: string; transport?: TransportName } = {}) {
  const cache = await connect<T>({ socketPath, autoStart: false, ...options });
  onTestFinished(() => cache.close());
  return cache;
}

/** Starts `hoard args` as a child process; resolves to its exit code and output once it ends. */
function startHoard(args: string[]) {
  const child = spawn(process.execPath, [BIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  onTestFinished(() => void child.kill('SIGKILL'));
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
  const ended = new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) =>
    child.on('close', (code) => resolve({ code, stdout, stderr })),
  );
  return { pid: child.pid!, ended };
}

describe.each(['json', 'binary'] as const)('protocol 2 through RemoteCache over %s', (transport) => {
  test('expiry, get without waiting, getset stale, list, status with a scope, locks, gc and verify go through', async () => {
    const { socketPath } = await daemonProcess(['--max-size', '1MiB']);
    const cache = await client<string>(socketPath, { transport, clientName: `round trip ${transport}` });
    const before = Date.now();
    await cache.withScope('a').set('fresh', 'one', { ttlMs: 3_600_000 });
    {
      await using got = await cache.withScope('a').get('fresh');
      expect(await got.item!.value()).toBe('one');
      expect(got.item!.expires! * 1000).toBeGreaterThanOrEqual(before + 3_600_000);
      expect(got.item!.expires! * 1000).toBeLessThanOrEqual(Date.now() + 3_600_000);
    }
    // An item that expires at once and is kept a minute as stale: a miss for get, a stale item for getset.
    await cache.set('soon', 'old value', { ttlMs: 1, staleMs: 60_000 });
    // A get within the millisecond it lives is a hit: counted below.
    let hitsBeforeExpiry = 0;
    for (;;) {
      await using got = await cache.get('soon');
      if (got.item === null) break;
      hitsBeforeExpiry++;
    }
    {
      await using gs = await cache.getset('soon');
      expect(gs.item).toBeNull();
      expect(await gs.stale!.value()).toBe('old value');
      await gs.set('new value', { ttlMs: 3_600_000 });
      // get without waiting while the getset holds the lock: null at once.
      expect(await cache.get('soon', { wait: false })).toBeNull();
    }
    {
      const got = await cache.get('soon', { wait: false });
      expect(await got!.item!.value()).toBe('new value');
      expect(got!.item!.expires).not.toBeNull();
      await got!.release();
    }

    await cache.withScope('a').withScope('b').set('deep', 'x');
    const page = await cache.withScope('a').list();
    expect(page.items.map((item) => item.id)).toEqual(['fresh']);
    expect(page.items[0]).toMatchObject({ sizeBytes: expect.any(Number), modified: expect.any(Number), expires: expect.any(Number) });
    expect(page.items[0]!.sizeBytes).toBeGreaterThan(0);
    expect(page.scopes).toEqual(['b']);
    expect(page.cursor).toBeNull();
    // A cursor that is not one: a TypeError in a local cache, CACHE_INVALID_PARAMS from the daemon.
    await expect(cache.withScope('a').list({ cursor: 'not a cursor' })).rejects.toMatchObject({ name: 'CacheError', code: 'CACHE_INVALID_PARAMS' });

    const status = await cache.status({ scope: ['a'] });
    expect(status).toMatchObject({ protocolVersion: 2, limitBytes: 1024 * 1024, items: 3, scope: { path: ['a'], items: 2 } });
    expect(status.sizeBytes).toBeGreaterThan(0);
    expect(status.scopes.find((row) => row.name === 'a')).toMatchObject({ items: 2, hits: 1, misses: 0 });
    // Before: `hits: 1` alone, which failed once a get came within the millisecond the first value lived (hits 3).
    expect(status.scopes.find((row) => row.name === '')).toMatchObject({ items: 1, hits: 1 + hitsBeforeExpiry });

    {
      await using held = await cache.withScope('a').getset('fresh');
      void held;
      expect(await cache.locks()).toEqual([
        { scope: ['a'], id: 'fresh', mode: 'exclusive', state: 'held', client: `round trip ${transport}`, pid: process.pid, sinceMs: expect.any(Number) },
      ]);
    }
    expect(await cache.locks()).toEqual([]);

    expect(await cache.gc({ dryRun: true })).toMatchObject({ dryRun: true, evictedItems: 0, expiredItems: 0, sizeBytes: status.sizeBytes });
    expect(await cache.verify({ fix: false })).toMatchObject({ driftedScopes: [], orphanFiles: 0, strayEntries: 0, counted: { items: 3 } });
  });
});

test('a lock owner whose pid cannot be a process id is listed without one, in both transports', async () => {
  const { socketPath, run } = await daemonProcess();
  const raw = await RawClient.open(socketPath);
  for (const pid of [-1, 2 ** 40, 1.5]) {
    expect(await raw.request('initialize', { clientName: `odd ${pid}`, pid, protocolVersion: 2 })).toHaveProperty('result');
  }
  expect(await raw.request('cache/getset', { scope: [], id: 'k' })).toMatchObject({ result: { handle: expect.any(Number) } });
  const expected = [{ scope: [], id: 'k', mode: 'exclusive', state: 'held', client: 'odd 1.5', pid: null, sinceMs: expect.any(Number) }];
  expect(await (await client(socketPath, { transport: 'binary' })).locks()).toEqual(expected);
  expect(JSON.parse((await run(['locks', '--json'])).stdout.toString())).toEqual(expected);
});

describe('the hoard command for a look inside', () => {
  test('hoard locks shows the holder and the waiter of a contended item, with their client names and pids', async () => {
    const { socketPath, run } = await daemonProcess();
    const holder = await client(socketPath, { clientName: 'holder-tool' });
    const held = await holder.withScope('pages').getset('home');
    const waiter = startHoard(['--socket', socketPath, '--scope', 'pages', 'get', 'home']);
    // Ordered by observable state: the waiter's get is queued once the daemon counts one waiter.
    while ((await holder.status()).waiters < 1) await new Promise((resolve) => setImmediate(resolve));

    const json = await run(['locks', '--json']);
    expect(json.code).toBe(0);
    expect(JSON.parse(json.stdout.toString())).toEqual([
      { scope: ['pages'], id: 'home', mode: 'exclusive', state: 'held', client: 'holder-tool', pid: process.pid, sinceMs: expect.any(Number) },
      { scope: ['pages'], id: 'home', mode: 'shared', state: 'waiting', client: 'hoard cli', pid: waiter.pid, sinceMs: expect.any(Number) },
    ]);
    const text = (await run(['locks'])).stdout.toString().split('\n');
    expect(text[0]).toMatch(/^ITEM\s+KIND\s+STATE\s+PID\s+SINCE\s+CLIENT$/);
    expect(text[1]).toMatch(new RegExp(`^pages/home\\s+exclusive\\s+held\\s+${process.pid}\\s+.+holder-tool$`));
    expect(text[2]).toMatch(new RegExp(`^pages/home\\s+shared\\s+waiting\\s+${waiter.pid}\\s+.+hoard cli$`));

    await held.set('welcome');
    await held.release();
    expect(await waiter.ended).toMatchObject({ code: 0, stdout: 'welcome\n' });
    expect((await run(['locks'])).stdout.toString()).toBe('no locks held or waited for\n');
  });

  test('hoard get --timeout exits 4 naming the holder; --no-wait exits 4 at once; neither leaves a waiter', async () => {
    const { socketPath, run } = await daemonProcess();
    const holder = await client(socketPath, { clientName: 'slow build' });
    await holder.set('report', 'ready');
    const held = await holder.getset('report');

    const timedOut = await run(['get', 'report', '--timeout', '200ms']);
    expect(timedOut.code).toBe(4);
    expect(timedOut.stderr).toMatch(new RegExp(`^hoard: gave up after 200ms: report is locked by a write by slow build \\(pid ${process.pid}\\) for \\S+\\n$`));
    const atOnce = await run(['get', 'report', '--no-wait']);
    expect(atOnce.code).toBe(4);
    expect(atOnce.stderr).toMatch(new RegExp(`^hoard: gave up: report is locked by a write by slow build \\(pid ${process.pid}\\)`));
    expect(await holder.status()).toMatchObject({ locksHeld: 1, waiters: 0 });

    await held.release();
    expect(await run(['get', 'report', '--no-wait'])).toMatchObject({ code: 0, stderr: '' });
    expect((await run(['get', 'report', '--timeout', '5s'])).stdout.toString()).toBe('ready\n');
    expect((await run(['get', 'report', '--timeout', 'soon'])).code).toBe(2);
  });

  test('hoard ls lists the scopes and the items of three scopes, in text, --long and --json', async () => {
    const { socketPath, run } = await daemonProcess();
    const cache = await client(socketPath);
    for (const scope of ['alpha', 'beta', 'gamma']) {
      for (let n = 0; n < 3; n++) await cache.withScope(scope).set(`item${n}`, `${scope} ${n}`);
    }
    await cache.withScope('beta').withScope('inner').set('x', 'nested');
    await cache.set('top', 'root item', { ttlMs: 3_600_000 });

    expect((await run(['ls'])).stdout.toString()).toBe('alpha/\nbeta/\ngamma/\ntop\n');
    expect((await run(['--scope', 'beta', 'ls'])).stdout.toString()).toBe('inner/\nitem0\nitem1\nitem2\n');
    const long = (await run(['ls', '--long'])).stdout.toString().split('\n');
    expect(long[0]).toMatch(/^SIZE\s+MODIFIED\s+EXPIRES\s+ACCESSED\s+ID$/);
    expect(long.at(-2)).toMatch(/^\d+ B\s+\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ\s+\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ\s+\S+ \S+\s+top$/);
    for (const scope of ['alpha', 'beta', 'gamma']) {
      const lines = (await run(['--scope', scope, 'ls', '--json'])).stdout.toString().trim().split('\n').map((line) => JSON.parse(line) as Record<string, unknown>);
      const items = lines.filter((line) => line.type === 'item');
      expect(items.map((item) => item.id)).toEqual(['item0', 'item1', 'item2']);
      for (const item of items) expect(item).toMatchObject({ sizeBytes: expect.any(Number), modified: expect.any(Number), expires: null });
    }
  });

  test('hoard status --json has the size against the limit, items, evictions, expirations and per-scope figures; --scope counts one scope', async () => {
    const { socketPath, run } = await daemonProcess(['--max-size', '10MiB']);
    const cache = await client(socketPath);
    await cache.withScope('docs').set('a', 'x');
    await cache.withScope('docs').withScope('v2').set('b', 'y');
    await (await cache.withScope('docs').get('a')).release();
    await (await cache.withScope('img').get('missing')).release();

    const status = JSON.parse((await run(['status', '--json'])).stdout.toString()) as Record<string, unknown>;
    expect(status).toMatchObject({
      protocolVersion: 2,
      limitBytes: 10 * 1024 * 1024,
      items: 2,
      hits: 1,
      misses: 1,
      evictions: 0,
      evictedBytes: 0,
      expirations: 0,
      scopes: [
        { name: 'docs', items: 2, hits: 1, misses: 0, evictions: 0, expirations: 0, sizeBytes: expect.any(Number) },
        { name: 'img', items: 0, sizeBytes: 0, hits: 0, misses: 1, evictions: 0, expirations: 0 },
      ],
    });
    expect(status.sizeBytes).toBeGreaterThan(0);
    const scoped = JSON.parse((await run(['--scope', 'docs', '--scope', 'v2', 'status', '--json'])).stdout.toString()) as Record<string, unknown>;
    expect(scoped.scope).toEqual({ path: ['docs', 'v2'], items: 1, sizeBytes: expect.any(Number) });
    const text = (await run(['status'])).stdout.toString();
    expect(text).toMatch(/^size {9}\S+ \S+ \(limit 10\.0 MiB\), 2 items$/m);
    expect(text).toMatch(/^evictions {4}0 \(0 B\), expirations 0$/m);
    expect(text).toMatch(/^SCOPE\s+SIZE\s+ITEMS\s+HITS\s+MISSES\s+EVICTIONS\s+EXPIRATIONS$/m);
    expect(text).toMatch(/^docs\s+\S+ \S+\s+2\s+1\s+0\s+0\s+0$/m);
  });

  test('hoard gc and hoard verify go through the daemon; --max-size takes units and unlimited, and refuses the rest', async () => {
    const { run, dataDir, exited } = await daemonProcess(['--max-size', 'unlimited']);
    expect((await run(['set', 'k', 'v'])).code).toBe(0);
    expect((await run(['status', '--json'])).stdout.toString()).toMatch(/"limitBytes": null/);
    const gc = await run(['gc', '--dry-run']);
    expect(gc).toMatchObject({ code: 0, stderr: '' });
    expect(gc.stdout.toString()).toMatch(/^would evict 0 items \(0 B\) and remove 0 expired \(0 B\); size would be \S+ \S+\n$/);
    const verify = await run(['verify', '--no-fix']);
    expect(verify).toMatchObject({ code: 0, stderr: '' });
    expect(verify.stdout.toString()).toMatch(/^kept 1 items \(\S+ \S+\), counted 1 items \(\S+ \S+\); no drift; 0 orphan files \(0 B\); 0 stray entries\n$/);
    // With no daemon running, hoard verify opens the data directory itself.
    expect((await run(['stop'])).code).toBe(0);
    await exited;
    const offline = await run(['verify', '--data-dir', dataDir]);
    expect(offline).toMatchObject({ code: 0, stderr: '' });
    expect(offline.stdout.toString()).toMatch(/^kept 1 items .*; no drift; 0 orphan files \(0 B\); 0 stray entries\n$/);

    const dir = await tempDir('hi-');
    for (const size of ['0', '-1GiB', '10XB', 'lots']) {
      const refused = await runHoard(['daemon', '--socket', join(dir, 's.sock'), '--data-dir', join(dir, 'data'), '--max-size', size]);
      expect(refused.code, size).toBe(2);
      expect(refused.stderr, size).toMatch(/--max-size.*expected a size/);
    }
  });
});

test('listing 10,000 items in pages through RemoteCache while another connection writes: no duplicates, none missed', async () => {
  const { socketPath } = await daemonProcess();
  const lister = await client<number>(socketPath, { clientName: 'lister' });
  const writer = await client<number>(socketPath, { clientName: 'writer' });
  const scope = lister.withScope('many');
  const written = writer.withScope('many');
  const id = (n: number): string => `item${String(n).padStart(6, '0')}`;
  // The even items are present throughout; between pages the writer adds odd ones all over the key space, and deletes
  // some of them again, ahead of and behind the listing's position.
  await Promise.all(Array.from({ length: 10_000 }, (_, n) => written.set(id(2 * n), n)));
  const seen: string[] = [];
  let cursor: string | undefined;
  let pages = 0;
  do {
    const page = await scope.list({ cursor, limit: 700 });
    seen.push(...page.items.map((item) => item.id));
    cursor = page.cursor ?? undefined;
    pages++;
    await Promise.all(Array.from({ length: 50 }, (_, k) => written.set(id(2 * ((pages * 397 + k * 211) % 10_000) + 1), k)));
    await Promise.all(Array.from({ length: 20 }, (_, k) => written.delete(id(2 * ((pages * 397 + k * 211) % 10_000) + 1))));
  } while (cursor !== undefined);
  expect(pages).toBeGreaterThan(14);
  expect(new Set(seen).size).toBe(seen.length);
  const present = new Set(seen);
  const missed = Array.from({ length: 10_000 }, (_, n) => id(2 * n)).filter((even) => !present.has(even));
  expect(missed).toEqual([]);
  expect([...seen].sort()).toEqual(seen);
});
