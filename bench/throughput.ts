/**
 * Throughput of hoard's caches against raw LevelDB in the same run: LevelCache in-process, raw LevelDB (the
 * `level` package, reading with `get` and with `getSync`), and RemoteCache talking to a `hoard daemon` child
 * process over a Unix socket:
 * 10,000 keys of 1 KiB, preloaded, then a closed loop of 90% get / 10% set on uniform random keys
 * with 32 requests in flight. Runs alternate between the two systems; medians and spread are printed.
 *
 *   npm run bench:throughput -- [--seconds 3] [--runs 5] [--in-flight 32]
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { Level } from 'level';
import { fileURLToPath } from 'node:url';
import { connect } from '../client/index.js';
import { LevelCache } from '../src/index.js';

const { values: args } = parseArgs({
  options: {
    seconds: { type: 'string', default: '3' },
    runs: { type: 'string', default: '5' },
    'in-flight': { type: 'string', default: '32' },
    keys: { type: 'string', default: '10000' },
    'value-bytes': { type: 'string', default: '1024' },
  },
});
const seconds = Number(args.seconds);
const runs = Number(args.runs);
const inFlight = Number(args['in-flight']);
const keyCount = Number(args.keys);
const valueBytes = Number(args['value-bytes']);

interface System {
  name: string;
  get(key: string): Promise<unknown>;
  set(key: string, value: Uint8Array): Promise<void>;
  close(): Promise<void>;
}

async function openLevelCache(dir: string): Promise<System> {
  const cache = await LevelCache.open<Uint8Array>(dir, { codec: 'binary' });
  return {
    name: 'LevelCache',
    async get(key) {
      await using got = await cache.get(key);
      return got.item?.value();
    },
    set: (key, value) => cache.set(key, value),
    close: () => cache.close(),
  };
}

async function openRawLevel(dir: string): Promise<System> {
  const db = new Level<string, Uint8Array>(dir, { valueEncoding: 'view' });
  await db.open();
  return {
    name: 'raw get',
    get: (key) => db.get(key),
    set: (key, value) => db.put(key, value),
    close: () => db.close(),
  };
}

/** LevelCache reads with `getSync`, so raw LevelDB is measured that way too. */
async function openRawLevelSync(dir: string): Promise<System> {
  const db = new Level<string, Uint8Array>(dir, { valueEncoding: 'view' });
  await db.open();
  return {
    name: 'raw getSync',
    get: async (key) => db.getSync(key),
    set: (key, value) => db.put(key, value),
    close: () => db.close(),
  };
}

async function measure(system: System): Promise<number> {
  const value = new Uint8Array(valueBytes).fill(7);
  const keys = Array.from({ length: keyCount }, (_, n) => `key-${n}`);
  for (let n = 0; n < keyCount; n += 256) await Promise.all(keys.slice(n, n + 256).map((key) => system.set(key, value)));
  const deadline = performance.now() + seconds * 1000;
  let done = 0;
  const worker = async (): Promise<void> => {
    while (performance.now() < deadline) {
      const key = keys[Math.floor(Math.random() * keyCount)]!;
      if (Math.random() < 0.9) await system.get(key);
      else await system.set(key, value);
      done++;
    }
  };
  const start = performance.now();
  await Promise.all(Array.from({ length: inFlight }, worker));
  return done / ((performance.now() - start) / 1000);
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = sorted.length >> 1;
  return sorted.length % 2 ? sorted[middle]! : (sorted[middle - 1]! + sorted[middle]!) / 2;
}

/** A daemon in its own process, as users run it, and a RemoteCache connected to it. */
async function openRemoteCache(dir: string): Promise<System> {
  const socketPath = join(dir, 's.sock');
  const bin = fileURLToPath(new URL('../client/bin.js', import.meta.url));
  const daemon = spawn(process.execPath, [bin, 'daemon', '--socket', socketPath, '--data-dir', join(dir, 'data')], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  await new Promise<void>((resolve) => daemon.stderr!.on('data', (chunk: Buffer) => chunk.includes('listening') && resolve()));
  const cache = await connect<Uint8Array>({ socketPath, codec: 'binary', autoStart: false });
  return {
    name: 'RemoteCache',
    async get(key) {
      const got = await cache.get(key);
      try {
        return await got.item?.value();
      } finally {
        await got.release();
      }
    },
    set: (key, value) => cache.set(key, value),
    async close() {
      await cache.close();
      daemon.kill('SIGTERM');
      await once(daemon, 'exit');
    },
  };
}

const systems = [openLevelCache, openRawLevel, openRawLevelSync, openRemoteCache];
const RATIOS = [
  ['LevelCache', 'raw get'],
  ['LevelCache', 'raw getSync'],
  ['RemoteCache', 'LevelCache'],
] as const;
const results: Record<string, number[]> = {};
const ratios: Record<string, number[]> = {};
for (let run = 0; run < runs; run++) {
  // Rotate the order so that no system always runs first.
  const order = systems.map((_, n) => systems[(n + run) % systems.length]!);
  const measured: Record<string, number> = {};
  for (const open of order) {
    const dir = await mkdtemp(join(tmpdir(), 'hoard-bench-'));
    const system = await open(dir);
    measured[system.name] = await measure(system);
    await system.close();
    await rm(dir, { recursive: true, force: true });
  }
  for (const [name, opsPerSecond] of Object.entries(measured)) {
    (results[name] ??= []).push(opsPerSecond);
  }
  for (const [numerator, denominator] of RATIOS) {
    (ratios[`${numerator} / ${denominator}`] ??= []).push(measured[numerator]! / measured[denominator]!);
  }
}

const format = (n: number): string => `${(n / 1000).toFixed(1)}k`;
console.log(`${keyCount} keys, ${valueBytes} B values, 90% get / 10% set, ${inFlight} in flight, ${runs} runs of ${seconds} s`);
for (const [name, values] of Object.entries(results)) {
  console.log(`${name.padEnd(12)} median ${format(median(values))} ops/s (runs: ${values.map(format).join(', ')})`);
}
for (const [name, values] of Object.entries(ratios)) {
  console.log(`${name}: median ${median(values).toFixed(2)}x (runs: ${values.map((r) => r.toFixed(2)).join(', ')})`);
}
