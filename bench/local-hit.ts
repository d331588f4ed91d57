/**
 * `npm run build && node dist/bench/local-hit.js`: the daemon's local-hit path (`LocalBackend.readNow` and the lock's
 * release), in one process, for a backend with a RedisTier attached to a real redis-server (every scope `shared`)
 * against one without. Needs redis-server.
 *
 * Both backends hold the same 10,000 items of 1 KiB, written through the backend (so through Redis for the tier's),
 * then closed and opened again, so that each store's memory layer is filled by the same reads: see README's
 * "Performance". `--no-reopen` measures them as written. Batches of hits on random keys run in turns, which goes first
 * alternating; the figure is the median over the pairs of the tier's CPU time per hit over the plain one's.
 *
 *   node dist/bench/local-hit.js [--pairs 41] [--hits 100000] [--no-reopen]
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { RedisTier } from '../daemon/redis-tier.js';
import { tierOptions } from '../daemon/tier-options.js';
import { LevelStore } from '../src/level/level-store.js';
import { LocalBackend } from '../src/local-backend.js';
import { scopeOf } from '../src/scope-path.js';
import type { EncodedValue } from '../src/store.js';
import { startRedis } from './systems.js';

const { values: args } = parseArgs({
  options: {
    pairs: { type: 'string', default: '41' },
    hits: { type: 'string', default: '100000' },
    'no-reopen': { type: 'boolean', default: false },
  },
});
const PAIRS = Number(args.pairs);
const HITS = Number(args.hits);
const KEYS = 10_000;
const SCOPE = scopeOf(['pages']);
const keep = { encode: (value: EncodedValue) => value, decode: (value: EncodedValue) => value };
type Backend = LocalBackend<EncodedValue, EncodedValue>;

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)]!;
}

async function open(dataDir: string, redisSocket: string | undefined): Promise<Backend> {
  const store = await LevelStore.open(dataDir, { maxSizeBytes: Infinity });
  const settings = redisSocket === undefined ? undefined : tierOptions({ tier: [`unix://${redisSocket}`], share: ['*=shared'] }, {});
  const tier = settings && new RedisTier({ ...settings, dataDir, log: () => {} });
  const backend = new LocalBackend<EncodedValue, EncodedValue>(store, keep, tier ? { tier } : {});
  await backend.openTier();
  return backend;
}

async function filled(dataDir: string, redisSocket: string | undefined): Promise<Backend> {
  let backend = await open(dataDir, redisSocket);
  const value: EncodedValue = { encoding: 'binary', bytes: new Uint8Array(1024).fill(7) };
  for (let n = 0; n < KEYS; n++) await backend.set(SCOPE, `key-${n}`, value, { modified: 1_700_000_000 });
  if (args['no-reopen']) return backend;
  await backend.close();
  backend = await open(dataDir, redisSocket);
  // The tier may drop the copy of its last write at this open (the position it saved was from before that change): the
  // batches below count local hits only. Reads may also pause for a moment after an open.
  for (let tries = 0; tries < 100; tries++) {
    const read = backend.readNow(SCOPE, 'key-0');
    read?.lease.release();
    if (read?.record !== undefined) break;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return backend;
}

/**
 * The process's CPU time (all threads) per local hit of readNow-and-release calls on `ids`, in nanoseconds: CPU time
 * rather than elapsed, as it does not count the time other processes had the CPU. A call that is not a hit is not counted.
 */
function batch(backend: Backend, ids: readonly string[]): number {
  let hits = 0;
  const started = process.cpuUsage();
  for (const id of ids) {
    const read = backend.readNow(SCOPE, id);
    if (read === undefined) continue;
    read.lease.release();
    if (read.record !== undefined) hits++;
  }
  const used = process.cpuUsage(started);
  return ((used.user + used.system) * 1000) / Math.max(1, hits);
}

async function main(): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'hoard-local-hit-'));
  const redis = await startRedis(join(dir, 'r'));
  const backends: Backend[] = [];
  try {
    const plain = await filled(join(dir, 'plain'), undefined);
    backends.push(plain);
    const tiered = await filled(join(dir, 'tier'), redis.endpoint);
    backends.push(tiered);
    const ids = Array.from({ length: HITS }, () => `key-${Math.floor(Math.random() * KEYS)}`);
    // Warm-up: the memory layers filled, the code optimised, for both alike.
    for (let n = 0; n < 5; n++) {
      batch(plain, ids);
      batch(tiered, ids);
    }
    const ratios: number[] = [];
    const plainNs: number[] = [];
    const tierNs: number[] = [];
    for (let pair = 0; pair < PAIRS; pair++) {
      const [first, second] = pair % 2 === 0 ? [plain, tiered] : [tiered, plain];
      const firstNs = batch(first, ids);
      const secondNs = batch(second, ids);
      const [p, t] = first === plain ? [firstNs, secondNs] : [secondNs, firstNs];
      plainNs.push(p);
      tierNs.push(t);
      ratios.push(t / p);
      // A turn of the event loop between pairs: the tier's timers and sockets run as they would in the daemon.
      await new Promise((resolve) => setTimeout(resolve, 1));
    }
    const sorted = [...ratios].sort((a, b) => a - b);
    console.log(
      `readNow local hits, ${PAIRS} pairs of ${HITS} hits on ${KEYS} keys of 1 KiB${args['no-reopen'] ? ' (as written)' : ' (reopened)'}: ` +
        `tier/plain CPU time per hit median ${median(ratios).toFixed(3)}x (middle half ${sorted[Math.floor(PAIRS / 4)]!.toFixed(3)}-${sorted[Math.floor((3 * PAIRS) / 4)]!.toFixed(3)}x); ` +
        `median ${median(tierNs).toFixed(0)} vs ${median(plainNs).toFixed(0)} ns, fastest ${Math.min(...tierNs).toFixed(0)} vs ${Math.min(...plainNs).toFixed(0)} ns.`,
    );
  } finally {
    for (const backend of backends) await backend.close();
    await redis.stop();
    await rm(dir, { recursive: true, force: true });
  }
}

void main();
