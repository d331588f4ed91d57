import { spawn } from 'node:child_process';
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { expect, test } from 'vitest';
import { connect, type RemoteCache, type StatusResult } from '../client/index.js';
import { type Cache, isCacheError, type VerifyReport } from '../src/index.js';
import { eventually } from './conformance/support.js';
import { PROJECT_ROOT } from './support/child.js';
import { type DaemonProcess, startDaemonProcess } from './support/processes.js';
import { tempDir } from './support/temp-dir.js';

const KILLS = 20;
/** The daemon's --max-size: a few large values' worth, so that it evicts all the time. */
const LIMIT_BYTES = 300_000;
/** Top-level scopes the items are spread over (`''`: the root's own items), so that drift is checked per scope. */
const SCOPES = ['alpha', 'beta', ''] as const;
/** With every key held, about 2.9 MB: ten times the limit. */
const KEYS_PER_SCOPE = 60;
/** Writers, each with keys of its own, so that each key's writes are acknowledged in the order they were sent. */
const WRITERS = 8;
/**
 * How far above the limit the count may get: the writes that land while one eviction batch is removed (each writer
 * has one write in flight, and the group commit takes a few at a time), at the size of the largest item.
 */
const OVERSHOOT_BYTES = 2 * WRITERS * 42_000;

type Value = { n: number; pad: string };
type Op = { kind: 'set'; value: Value } | { kind: 'absent' };
interface Key {
  scope: string;
  id: string;
  /** Keys whose id ends in 0 or 5 take values of about 40 KB, which the daemon keeps in files of their own. */
  large: boolean;
  /** The last write acknowledged (or what the check after a restart found), and the one the kill cut off, if any. */
  acknowledged: Op;
  pending: Op | undefined;
}

const keys: Key[] = SCOPES.flatMap((scope) =>
  Array.from({ length: KEYS_PER_SCOPE }, (_, n) => ({ scope, id: `k${n}`, large: n % 5 === 0, acknowledged: { kind: 'absent' } as Op, pending: undefined })),
);

/** A value whose every byte depends on `n`, so that a value torn or mixed with another is seen. */
function valueFor(n: number, large: boolean): Value {
  const length = large ? 34_000 + (n % 7) * 1000 : 200 + (n % 9) * 200;
  return { n, pad: String.fromCharCode(97 + (n % 26)).repeat(length) };
}

function scoped(cache: Cache<Value>, scope: string): Cache<Value> {
  return scope === '' ? cache : cache.withScope(scope);
}

/** `node dist/daemon/main.js verify --no-fix`: the daemon's entry opening the directory itself, without its sweep. */
function verifyOffline(dataDir: string): Promise<VerifyReport> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [join(PROJECT_ROOT, 'dist/daemon/main.js'), 'verify', '--data-dir', dataDir, '--no-fix'], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => (out += chunk));
    child.on('error', reject);
    child.on('close', (code) => (code === 0 ? resolve(JSON.parse(out) as VerifyReport) : reject(new Error(`verify exited with ${code}: ${out}`))));
  });
}

async function blobFiles(dataDir: string): Promise<number> {
  const subs = await readdir(join(dataDir, 'blobs')).catch(() => []);
  return (await Promise.all(subs.map((sub) => readdir(join(dataDir, 'blobs', sub))))).flat().length;
}

/** Kept and counted agree per top-level scope: daemon/status's kept figures against its count from the data. */
async function expectNoScopeDrift(cache: RemoteCache<Value>): Promise<void> {
  const status = await cache.status();
  for (const name of SCOPES.filter((scope) => scope !== '')) {
    const kept = status.scopes.find((row) => row.name === name) ?? { sizeBytes: 0, items: 0 };
    const counted = (await cache.status({ scope: [name] })).scope!;
    expect({ scope: name, sizeBytes: kept.sizeBytes, items: kept.items }).toEqual({ scope: name, sizeBytes: counted.sizeBytes, items: counted.items });
  }
}

test(`verify finds no drift after ${KILLS} SIGKILLs of a daemon with a small --max-size during writes, deletes, expiries and evictions`, async () => {
  const dir = await tempDir('hk-');
  const socketPath = join(dir, 's.sock');
  const dataDir = join(dir, 'data');
  let next = 0;
  let evictions = 0;
  let expirations = 0;
  let mostBytes = 0;
  let mostAtRestart = 0;
  let foundPresent = 0;
  let foundAbsent = 0;
  const reports: VerifyReport[] = [];

  const startDaemon = (): Promise<DaemonProcess> => startDaemonProcess({ socketPath, dataDir, extra: ['--max-size', String(LIMIT_BYTES)] });

  for (let round = 0; round < KILLS; round++) {
    const daemon = await startDaemon();
    const checker = await connect<Value>({ socketPath, autoStart: false, clientName: 'checker' });
    // The count kept survived the kill: what the killed daemon held, at most the limit and what lands during a batch.
    const atStart = await checker.status();
    expect(atStart.limitBytes).toBe(LIMIT_BYTES);
    mostAtRestart = Math.max(mostAtRestart, atStart.sizeBytes);
    expect(atStart.sizeBytes).toBeLessThanOrEqual(LIMIT_BYTES + OVERSHOOT_BYTES);
    // A daemon that opens above its limit evicts at once; once it has, the size is within the limit.
    await eventually(async () => (await checker.status()).sizeBytes <= LIMIT_BYTES, 'the eviction at open');

    // No drift: the count the daemon keeps equals the count it makes from the data, in total and per scope; the
    // files the kill left behind were removed by this open's sweep, and no index entry is stray.
    const report = await checker.verify({ fix: false });
    reports.push(report);
    expect(report).toMatchObject({ driftedScopes: [], orphanFiles: 0, strayEntries: 0 });
    expect(report.kept).toEqual(report.counted);
    await expectNoScopeDrift(checker);

    // Every key holds its last acknowledged value or the one the kill cut off, or nothing (evicted, expired or
    // deleted); never another value, a torn one, or a deleted one come back.
    await Promise.all(
      keys.map(async (key) => {
        await using got = await scoped(checker, key.scope).get(key.id);
        const allowed = [key.acknowledged, key.pending].flatMap((op) => (op?.kind === 'set' ? [op.value] : []));
        if (got.item === null) {
          foundAbsent++;
          key.acknowledged = { kind: 'absent' };
        } else {
          const value = await got.item.value();
          expect(allowed, `${key.scope}/${key.id}`).toContainEqual(value);
          foundPresent++;
          key.acknowledged = { kind: 'set', value };
        }
        key.pending = undefined;
      }),
    );

    let stop = false;
    let acknowledgedThisRound = 0;
    const writer = async (cache: RemoteCache<Value>, own: Key[]): Promise<void> => {
      while (!stop) {
        const key = own[Math.floor(Math.random() * own.length)]!;
        const n = next++;
        const roll = n % 20;
        const op: Op = roll < 3 ? { kind: 'absent' } : { kind: 'set', value: valueFor(n, key.large) };
        key.pending = op;
        try {
          const at = scoped(cache, key.scope);
          if (op.kind === 'absent') await at.delete(key.id);
          else if (roll < 12) await at.set(key.id, op.value);
          // Small values also get times to live of 1 to 20 ms, so that items expire all the time.
          else if (roll < 16 && !key.large) await at.set(key.id, op.value, { ttlMs: 1 + (n % 20), staleMs: n % 2 === 0 ? 0 : 50 });
          else await at.set(key.id, op.value, { ttlMs: 3_600_000, staleMs: 60_000 });
        } catch (error) {
          // The daemon is gone: this call was cut off, or found no daemon to reconnect to.
          if (isCacheError(error, 'CACHE_CONNECTION_LOST') || isCacheError(error, 'CACHE_NO_DAEMON')) return;
          throw error;
        }
        key.acknowledged = op;
        key.pending = undefined;
        acknowledgedThisRound++;
      }
    };
    const connections = await Promise.all(
      (['binary', 'json'] as const).map((transport) => connect<Value>({ socketPath, autoStart: false, transport, clientName: `writer ${transport}` })),
    );
    const writers = Array.from({ length: WRITERS }, (_, w) =>
      writer(
        connections[w % connections.length]!,
        keys.filter((_, index) => index % WRITERS === w),
      ),
    );

    // The kill comes at a moment chosen by what the daemon shows: in even rounds once it has evicted a number of
    // items since it started (so most often in the middle of an eviction), in odd ones after a number of writes.
    const evictionsWanted = 1 + ((round * 37) % 60);
    const writesWanted = 5 + ((round * 53) % 150);
    let last: StatusResult;
    for (;;) {
      last = await checker.status();
      mostBytes = Math.max(mostBytes, last.sizeBytes);
      expect(last.sizeBytes).toBeLessThanOrEqual(LIMIT_BYTES + OVERSHOOT_BYTES);
      // A bound, so that a daemon that never evicts fails here rather than at the test's timeout.
      expect(acknowledgedThisRound, 'writes acknowledged without the evictions wanted').toBeLessThan(5_000);
      if (round % 2 === 0 ? last.evictions >= evictionsWanted : acknowledgedThisRound >= writesWanted) break;
    }
    evictions += last.evictions;
    expirations += last.expirations;
    daemon.child.kill('SIGKILL');
    await daemon.exited;
    await Promise.all(writers);
    stop = true;
    await Promise.all([checker, ...connections].map((cache) => cache.close()));
  }

  // After the last kill, the directory as the kill left it: the count kept equals the count made from the data; the
  // only thing out of place may be files written for values whose records the kill cut off.
  const offline = await verifyOffline(dataDir);
  expect(offline).toMatchObject({ driftedScopes: [], strayEntries: 0 });
  expect(offline.kept).toEqual(offline.counted);
  // The next open's sweep removes those files: then one file per large value kept, and none else.
  await startDaemon();
  const checker = await connect<Value>({ socketPath, autoStart: false });
  const settled = await checker.verify({ fix: false });
  expect(settled).toMatchObject({ driftedScopes: [], orphanFiles: 0, strayEntries: 0 });
  expect(settled.kept).toEqual(settled.counted);
  let large = 0;
  for (const key of keys.filter((key) => key.large)) {
    await using got = await scoped(checker, key.scope).get(key.id);
    if (got.item !== null) large++;
  }
  expect(await blobFiles(dataDir)).toBe(large);
  await checker.close();

  // The test means something: the daemons evicted and expired items, and acknowledged values were found both ways.
  expect(evictions).toBeGreaterThan(KILLS);
  expect(expirations).toBeGreaterThan(0);
  expect(foundPresent).toBeGreaterThan(KILLS);
  expect(foundAbsent).toBeGreaterThan(KILLS);
  const drift = reports.filter((report) => report.kept.items !== report.counted.items || report.kept.bytes !== report.counted.bytes).length;
  console.log(
    `eviction crashes: ${KILLS} kills, ${next} writes sent, ${evictions} evictions and ${expirations} expirations seen; ` +
      `${drift} restarts with drift; after the last kill kept ${offline.kept.items} items (${offline.kept.bytes} B), counted ${offline.counted.items} (${offline.counted.bytes} B), ` +
      `${offline.orphanFiles} orphan files; size at most ${mostBytes} B while writing and ${mostAtRestart} B at a restart, limit ${LIMIT_BYTES} B; ` +
      `values checked after restarts: ${foundPresent} present, ${foundAbsent} absent`,
  );
}, 120_000);
