/**
 * `npm run bench`: hoard against Redis, cacache and LevelDB in one run, on this machine.
 *
 *   npm run bench                      the whole comparison (several minutes)
 *   npm run bench -- --quick           1 KiB values, one short run per point (under a minute)
 *   npm run bench -- --quick --only hoard    what CI runs: that the benchmark still works
 *   npm run bench -- --only tier       hoard with a shared tier on Redis only (needs redis-server)
 *   npm run bench -- --only hoard --only redis --sizes 1024 --modes 1x32,4x8 --points-only
 *                                      only those points, without the hand-off, cold start, limit and tier parts
 *   npm run bench -- --build .bench/base/dist ...   also `hoard-base`: the daemon and client of another build's
 *                                      dist/ (a package.json beside it), measured in turns with this one (before and
 *                                      after in one run); `--build name=dir` names it, and may be repeated
 *
 * Systems are measured in turns within each mode (which goes first rotates each run), so that the machine's noise
 * falls on all alike. For systems with a process of their own, it also gives the server's CPU time and read and write
 * system calls per request (`/proc/<pid>/task/<tid>/schedstat` and `/proc/<pid>/io`). `HOARD_BENCH_DAEMON_FLAGS`
 * adds Node flags to the daemons it starts (for example `--cpu-prof --cpu-prof-dir=/tmp/prof`), and
 * `HOARD_BENCH_WORKER_FLAGS` to its worker processes.
 *
 * Writes .bench/results.json and .bench/results.md and prints the table. Every hoard figure is also given as a
 * ratio to redis-server + ioredis measured in the same run.
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { connect } from '../client/index.js';
import type { TierStatus } from '../src/shared-tier.js';
import { hoardBuild, type Server, startHoard, startRedis, SYSTEMS, type System } from './systems.js';
import type { Job, LoopResult } from './worker.js';

const { values: args } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    only: { type: 'string', multiple: true },
    runs: { type: 'string' },
    seconds: { type: 'string' },
    sizes: { type: 'string' },
    modes: { type: 'string' },
    'points-only': { type: 'boolean', default: false },
    build: { type: 'string', multiple: true },
  },
});
const QUICK = args.quick;
const RUNS = Number(args.runs ?? (QUICK ? 1 : 3));
const SECONDS = Number(args.seconds ?? (QUICK ? 1 : 3));
const KEYS = 10_000;
/**
 * Local hits with the tier against without: pairs of runs per mode, and each run's length in seconds. Many short
 * runs rather than a few long ones, so that a burst of other load spoils a few pairs, not the median.
 */
const HIT_PAIRS = QUICK ? 1 : 9;
const HIT_SECONDS = QUICK ? SECONDS : 1;
const VALUE_SIZES = args.sizes ? args.sizes.split(',').map(Number) : QUICK ? [1024] : [1024, 64 * 1024];
const ALL_MODES = [
  { name: '1x1', processes: 1, inFlight: 1 },
  { name: '1x32', processes: 1, inFlight: 32 },
  { name: '4x8', processes: 4, inFlight: 8 },
] as const;
const MODES = args.modes ? ALL_MODES.filter((mode) => args.modes!.split(',').includes(mode.name)) : ALL_MODES;
const WORKER = join(__dirname, 'worker.js');
const HOARD_BIN = join(__dirname, '..', 'client', 'bin.js');

const builds = (args.build ?? []).map((spec) => {
  const [name, dir] = spec.includes('=') ? [spec.slice(0, spec.indexOf('=')), spec.slice(spec.indexOf('=') + 1)] : ['hoard-base', spec];
  return hoardBuild(name, dir);
});
const systems = [...SYSTEMS, ...builds].filter((system) => !args.only || args.only.includes(system.name) || builds.includes(system));
const hasRedis = spawnSync('redis-server', ['--version']).status === 0;
if (systems.some((s) => s.name === 'redis') && !hasRedis) {
  console.error('redis-server is missing: install it (apt-get install redis-server), or pass --only hoard.');
  process.exit(1);
}
// hoard with a shared tier on Redis: with hoard, when redis-server is there; `--only tier` asks for it alone.
const withTier = !args['points-only'] && (!args.only || args.only.includes('hoard') || args.only.includes('tier'));
if (withTier && !hasRedis) {
  if (args.only?.includes('tier')) {
    console.error('redis-server is missing: install it (apt-get install redis-server) to measure the shared tier.');
    process.exit(1);
  }
  console.error('redis-server is missing: hoard with the shared tier is left out (apt-get install redis-server).');
}

/** Node flags for the loop workers, from `HOARD_BENCH_WORKER_FLAGS` (space-separated): for their profiles. */
const WORKER_FLAGS = (process.env['HOARD_BENCH_WORKER_FLAGS'] ?? '').split(' ').filter(Boolean);

function runWorker(job: Job): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [...WORKER_FLAGS, WORKER, JSON.stringify(job)], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => (out += chunk));
    child.on('exit', (code) => (code === 0 ? resolve(JSON.parse(out)) : reject(new Error(`a ${job.kind} worker for ${job.system} exited with ${code}`))));
  });
}

/**
 * The CPU time a process has used so far, all its threads, in nanoseconds (the first field of each thread's
 * `/proc/<pid>/task/<tid>/schedstat`): unlike `/proc/<pid>/stat`'s clock ticks (10 ms), fine enough for a one-second run.
 */
async function cpuNs(pid: number | undefined): Promise<number> {
  const tasks = await readdir(`/proc/${pid}/task`);
  const times = await Promise.all(tasks.map((tid) => readFile(`/proc/${pid}/task/${tid}/schedstat`, 'utf8').catch(() => '0')));
  return times.reduce((total, text) => total + Number(text.split(' ')[0]), 0);
}

/** The CPU time of a process's main thread so far, in nanoseconds. */
async function mainCpuNs(pid: number): Promise<number> {
  return Number((await readFile(`/proc/${pid}/task/${pid}/schedstat`, 'utf8').catch(() => '0')).split(' ')[0]);
}

async function rssMiB(pid: number | undefined): Promise<number | null> {
  if (!pid) return null;
  const status = await readFile(`/proc/${pid}/status`, 'utf8').catch(() => '');
  const kib = /VmRSS:\s+(\d+)/.exec(status)?.[1];
  return kib ? Number(kib) / 1024 : null;
}

function percentile(sorted: number[], p: number): number {
  return sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]! : NaN;
}

function median(values: number[]): number {
  return percentile([...values].sort((a, b) => a - b), 50);
}

interface Point {
  system: string;
  valueBytes: number;
  mode: string;
  opsPerSecond: number;
  runs: number[];
  getP50Ms: number;
  getP99Ms: number;
  setP50Ms: number;
  setP99Ms: number;
  /** The server process's CPU time (all threads) and read and write system calls per request, medians of the runs. */
  serverCpuUsPerOp: number | null;
  serverReadsPerOp: number | null;
  serverWritesPerOp: number | null;
  /** The server's main thread's share of that CPU time (the rest: LevelDB's and libuv's threads). */
  serverMainCpuUsPerOp: number | null;
  /** The client processes' CPU time per request, median of the runs. */
  clientCpuUsPerOp: number | null;
}

interface MemoryFigures {
  system: string;
  valueBytes: number;
  idleMiB: number | null;
  loadMiB: number | null;
  afterMiB: number | null;
}

/** The read and write system calls a process has made so far (`/proc/<pid>/io`: `syscr`, `syscw`). */
async function syscalls(pid: number | undefined): Promise<{ reads: number; writes: number } | null> {
  if (!pid) return null;
  const text = await readFile(`/proc/${pid}/io`, 'utf8').catch(() => '');
  const reads = /syscr:\s+(\d+)/.exec(text)?.[1];
  const writes = /syscw:\s+(\d+)/.exec(text)?.[1];
  return reads && writes ? { reads: Number(reads), writes: Number(writes) } : null;
}

/**
 * `HOARD_BENCH_STRACE=<dir>`: each run's server system calls counted by `strace -c -f` (slows the server a lot: counts
 * only); `HOARD_BENCH_STRACE_ARGS` replaces `-c` (for example `-e trace=write,writev,read -y` to see each call's file).
 */
const straceDir = process.env['HOARD_BENCH_STRACE'];

/** Starts `strace -c -f` on `pid`, writing its summary to `file` once interrupted; resolves once it is attached. */
async function strace(pid: number, file: string): Promise<ChildProcess> {
  await mkdir(straceDir!, { recursive: true });
  const how = (process.env['HOARD_BENCH_STRACE_ARGS'] ?? '-c').split(' ').filter(Boolean);
  const tracer = spawn('strace', [...how, '-f', '-p', String(pid), '-o', file], { stdio: ['ignore', 'ignore', 'pipe'] });
  await new Promise<void>((resolve) => {
    let seen = '';
    tracer.stderr.on('data', (chunk: Buffer) => {
      seen += chunk.toString();
      if (seen.includes('attached')) resolve();
    });
    tracer.once('exit', () => resolve());
  });
  return tracer;
}

interface Started {
  system: System;
  server: Server;
  dir: string;
  idleMiB: number | null;
  loadMiB: number | null;
  sampler: NodeJS.Timeout;
}

/** One closed-loop run of `mode` against one started system, with its server's CPU time and system calls. */
async function runOnce(s: Started, valueBytes: number, mode: (typeof MODES)[number]) {
  const base = { system: s.system.name, endpoint: s.server.endpoint, keys: KEYS, valueBytes, seconds: SECONDS };
  const startAt = Date.now() + 300;
  const jobs = Array.from({ length: mode.processes }, () => runWorker({ ...base, kind: 'loop', inFlight: mode.inFlight, startAt }));
  // Sampled just before the workers start and as soon as they end (their connecting is counted too, a small share).
  const [cpuBefore, callsBefore, mainBefore] = s.server.pid ? [await cpuNs(s.server.pid), await syscalls(s.server.pid), await mainCpuNs(s.server.pid)] : [0, null, 0];
  const tracer = straceDir && s.server.pid ? await strace(s.server.pid, join(straceDir, `${s.system.name}-${valueBytes}-${mode.name}-${Date.now()}.txt`)) : undefined;
  const results = (await Promise.all(jobs)) as LoopResult[];
  if (tracer) {
    tracer.kill('SIGINT');
    await once(tracer, 'exit');
  }
  const [cpuAfter, callsAfter, mainAfter] = s.server.pid ? [await cpuNs(s.server.pid), await syscalls(s.server.pid), await mainCpuNs(s.server.pid)] : [0, null, 0];
  const ops = results.reduce((total, r) => total + r.ops, 0);
  return {
    results,
    opsPerSecond: results.reduce((total, r) => total + r.ops / (r.elapsedMs / 1000), 0),
    cpuUsPerOp: s.server.pid ? (cpuAfter - cpuBefore) / 1000 / ops : null,
    mainCpuUsPerOp: s.server.pid ? (mainAfter - mainBefore) / 1000 / ops : null,
    clientCpuUsPerOp: results.every((r) => r.cpuUs !== undefined) ? results.reduce((total, r) => total + r.cpuUs!, 0) / ops : null,
    readsPerOp: callsBefore && callsAfter ? (callsAfter.reads - callsBefore.reads) / ops : null,
    writesPerOp: callsBefore && callsAfter ? (callsAfter.writes - callsBefore.writes) / ops : null,
  };
}

/**
 * Every system at one value size: all started and preloaded, then each mode's runs made in turns, the system that
 * goes first rotating from run to run, so that a burst of other load falls on all of them alike.
 */
async function measureSize(valueBytes: number, points: Point[], memory: MemoryFigures[]): Promise<void> {
  const started: Started[] = [];
  try {
    for (const system of systems) {
      const dir = await mkdtemp(join(tmpdir(), 'hoard-bench-'));
      const server = await system.start(dir);
      const s: Started = { system, server, dir, idleMiB: await rssMiB(server.pid), loadMiB: null, sampler: undefined as unknown as NodeJS.Timeout };
      s.sampler = setInterval(() => void rssMiB(server.pid).then((mib) => (s.loadMiB = Math.max(s.loadMiB ?? 0, mib ?? 0))), 200);
      started.push(s);
      const base = { system: system.name, endpoint: server.endpoint, keys: KEYS, valueBytes, seconds: SECONDS };
      await runWorker({ ...base, kind: 'preload', inFlight: 64, startAt: 0 });
    }
    for (const mode of MODES) {
      const taking = started.filter((s) => mode.processes === 1 || s.system.shared);
      const byRun = new Map(taking.map((s) => [s, [] as Awaited<ReturnType<typeof runOnce>>[]]));
      for (let run = 0; run < RUNS; run++) {
        for (let n = 0; n < taking.length; n++) {
          const s = taking[(n + run) % taking.length]!;
          byRun.get(s)!.push(await runOnce(s, valueBytes, mode));
        }
      }
      for (const s of taking) {
        const runs = byRun.get(s)!;
        const getMs = runs.flatMap((r) => r.results.flatMap((w) => w.getMs)).sort((a, b) => a - b);
        const setMs = runs.flatMap((r) => r.results.flatMap((w) => w.setMs)).sort((a, b) => a - b);
        const medianOf = (values: (number | null)[]): number | null => (values.every((v) => v !== null) ? median(values as number[]) : null);
        const point: Point = {
          system: s.system.name,
          valueBytes,
          mode: mode.name,
          opsPerSecond: median(runs.map((r) => r.opsPerSecond)),
          runs: runs.map((r) => r.opsPerSecond),
          getP50Ms: percentile(getMs, 50),
          getP99Ms: percentile(getMs, 99),
          setP50Ms: percentile(setMs, 50),
          setP99Ms: percentile(setMs, 99),
          serverCpuUsPerOp: medianOf(runs.map((r) => r.cpuUsPerOp)),
          serverReadsPerOp: medianOf(runs.map((r) => r.readsPerOp)),
          serverWritesPerOp: medianOf(runs.map((r) => r.writesPerOp)),
          serverMainCpuUsPerOp: medianOf(runs.map((r) => r.mainCpuUsPerOp)),
          clientCpuUsPerOp: medianOf(runs.map((r) => r.clientCpuUsPerOp)),
        };
        points.push(point);
        console.error(`${s.system.name} ${valueBytes} B ${mode.name}: ${(point.opsPerSecond / 1000).toFixed(1)}k ops/s (runs ${point.runs.map((r) => (r / 1000).toFixed(1)).join(', ')})`);
      }
    }
  } finally {
    for (const s of started) {
      clearInterval(s.sampler);
      memory.push({ system: s.system.name, valueBytes, idleMiB: s.idleMiB, loadMiB: s.loadMiB, afterMiB: await rssMiB(s.server.pid) });
      await s.server.stop();
      await rm(s.dir, { recursive: true, force: true });
    }
  }
}

/** Eight processes take turns on one hoard lock: the time from one holder's release to the next one's grant. */
async function measureHandoff(): Promise<{ p50Ms: number; p99Ms: number; handoffs: number }> {
  const dir = await mkdtemp(join(tmpdir(), 'hoard-bench-'));
  const hoard = SYSTEMS.find((s) => s.name === 'hoard')!;
  const server = await hoard.start(dir);
  try {
    const startAt = Date.now() + 300;
    const job: Job = { kind: 'handoff', system: 'hoard', endpoint: server.endpoint, keys: 0, valueBytes: 0, inFlight: 1, seconds: SECONDS, startAt };
    const results = (await Promise.all(Array.from({ length: 8 }, () => runWorker(job)))) as { events: [number, number][] }[];
    const events = results.flatMap((r) => r.events).sort((a, b) => a[0] - b[0]);
    const gaps = events.slice(1).map(([granted], n) => granted - events[n]![1]).sort((a, b) => a - b);
    return { p50Ms: percentile(gaps, 50), p99Ms: percentile(gaps, 99), handoffs: gaps.length };
  } finally {
    await server.stop();
    await rm(dir, { recursive: true, force: true });
  }
}

/** From `connect()` with no daemon running to the first completed `get`. */
async function measureColdStart(): Promise<number[]> {
  const times: number[] = [];
  for (let run = 0; run < (QUICK ? 1 : 5); run++) {
    const dir = await mkdtemp(join(tmpdir(), 'hoard-bench-'));
    const socketPath = join(dir, 's.sock');
    const job: Job = { kind: 'cold', system: 'hoard', endpoint: socketPath, dataDir: join(dir, 'data'), keys: 0, valueBytes: 0, inFlight: 1, seconds: 0, startAt: 0 };
    times.push(((await runWorker(job)) as { coldMs: number }).coldMs);
    spawnSync(process.execPath, [HOARD_BIN, '--socket', socketPath, 'stop']);
    await rm(dir, { recursive: true, force: true });
  }
  return times;
}

/** The counted size of the data a daemon on `dir` holds, through its status. */
async function countedBytes(socketPath: string): Promise<number> {
  const cache = await connect({ socketPath, autoStart: false, clientName: 'bench status' });
  try {
    return (await cache.status()).sizeBytes;
  } finally {
    await cache.close();
  }
}

interface LimitFigures {
  /** ops/s of the loop with the limit at half the data set, and without a limit, per mode. */
  modes: { mode: string; limitedOps: number; unlimitedOps: number }[];
  limitBytes: number;
  /** Gets while the daemon evicts `evictedItems` at start, against the same gets once it is done. */
  eviction: { evictedItems: number; evictionMs: number; duringP99Ms: number; duringP50Ms: number; afterP99Ms: number; gets: number };
}

/** hoard with `--max-size` at half the data set against no limit, then the gets served during a large eviction. */
async function measureLimit(): Promise<LimitFigures> {
  const valueBytes = 1024;
  const modes: LimitFigures['modes'] = [];
  const unlimitedDir = await mkdtemp(join(tmpdir(), 'hoard-bench-'));
  const limitedDir = await mkdtemp(join(tmpdir(), 'hoard-bench-'));
  const servers: Awaited<ReturnType<typeof startHoard>>[] = [];
  let limitBytes = 0;
  try {
    // Two daemons side by side, one without a limit and one with half the data set, measured in turns so that the
    // machine's noise falls on both alike.
    const unlimited = await startHoard(unlimitedDir, ['--max-size', 'unlimited']);
    servers.push(unlimited);
    const base = { system: 'hoard', keys: KEYS, valueBytes, seconds: SECONDS };
    await runWorker({ ...base, endpoint: unlimited.endpoint, kind: 'preload', inFlight: 64, startAt: 0 });
    limitBytes = Math.floor((await countedBytes(unlimited.endpoint)) / 2);
    const limited = await startHoard(limitedDir, ['--max-size', String(limitBytes)]);
    servers.push(limited);
    await runWorker({ ...base, endpoint: limited.endpoint, kind: 'preload', inFlight: 64, startAt: 0 });
    const once = async (endpoint: string, mode: (typeof MODES)[number]): Promise<number> => {
      const startAt = Date.now() + 300;
      const jobs = Array.from({ length: mode.processes }, () => runWorker({ ...base, endpoint, kind: 'loop', inFlight: mode.inFlight, startAt }));
      const results = (await Promise.all(jobs)) as LoopResult[];
      return results.reduce((total, r) => total + r.ops / (r.elapsedMs / 1000), 0);
    };
    for (const mode of MODES) {
      const limitedRuns: number[] = [];
      const unlimitedRuns: number[] = [];
      for (let run = 0; run < RUNS; run++) {
        unlimitedRuns.push(await once(unlimited.endpoint, mode));
        limitedRuns.push(await once(limited.endpoint, mode));
      }
      modes.push({ mode: mode.name, limitedOps: median(limitedRuns), unlimitedOps: median(unlimitedRuns) });
    }
  } finally {
    for (const server of servers) await server.stop();
    await rm(unlimitedDir, { recursive: true, force: true });
    await rm(limitedDir, { recursive: true, force: true });
  }
  return { modes, limitBytes, eviction: await measureEviction(valueBytes) };
}

/** Fills a daemon with no limit, restarts it with a limit of a tenth of that, and times gets while it evicts the rest. */
async function measureEviction(valueBytes: number): Promise<LimitFigures['eviction']> {
  const keys = QUICK ? 20_000 : 110_000;
  const dir = await mkdtemp(join(tmpdir(), 'hoard-bench-'));
  try {
    let server = await startHoard(dir, ['--max-size', 'unlimited']);
    const base = { system: 'hoard', endpoint: server.endpoint, keys, valueBytes, seconds: SECONDS };
    await runWorker({ ...base, kind: 'preload', inFlight: 64, startAt: 0 });
    const limit = Math.floor(((await countedBytes(server.endpoint)) * (keys - 100_000 > 0 ? (keys - 100_000) / keys : 0.1)) / 0.9);
    await server.stop();
    server = await startHoard(dir, ['--max-size', String(limit)]);
    const during = (await runWorker({ ...base, endpoint: server.endpoint, kind: 'evicting', inFlight: 32, startAt: 0 })) as {
      getMs: number[];
      elapsedMs: number;
      evictedItems: number;
    };
    const after = (await runWorker({ ...base, endpoint: server.endpoint, kind: 'loop', inFlight: 32, startAt: 0 })) as LoopResult;
    await server.stop();
    const sortedDuring = [...during.getMs].sort((a, b) => a - b);
    return {
      evictedItems: during.evictedItems,
      evictionMs: during.elapsedMs,
      duringP50Ms: percentile(sortedDuring, 50),
      duringP99Ms: percentile(sortedDuring, 99),
      afterP99Ms: percentile([...after.getMs].sort((a, b) => a - b), 99),
      gets: during.getMs.length,
    };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

interface TierFigures {
  /** Local hits (every key held locally), ops/s of a get-only loop per mode, with the tier and without it. */
  localHits: {
    mode: string;
    tierOps: number;
    plainOps: number;
    /** tier ops/s over plain ops/s of each pair of runs made one after the other: their median is the figure quoted. */
    pairRatios: number[];
    tierGetP50Ms: number;
    plainGetP50Ms: number;
    /** The daemon's CPU time (all its threads) per get, median of the runs: steadier than ops/s on a busy machine. */
    tierCpuUsPerOp: number;
    plainCpuUsPerOp: number;
    /** The tier daemon's CPU time per get over the plain one's, for each pair of runs. */
    cpuPairRatios: number[];
  }[];
  /** Each daemon's CPU time while idle (the other one measured), in milliseconds per second: its background work. */
  idleCpuMsPerSecond: { tier: number; plain: number };
  /** Gets on a second daemon of what the first wrote (each a local miss and a hit in Redis), per mode. */
  sharedHits: { mode: string; gets: number; missed: number; opsPerSecond: number; getP50Ms: number; getP99Ms: number }[];
  /** The same keys read again on the second daemon, now local hits, 1 in flight. */
  againGetP50Ms: number;
  /** The second daemon's tier figures after the shared reads. */
  reader: TierStatus | null;
  /** The first daemon's tier figures after its writes. */
  writer: TierStatus | null;
  /** From one daemon's release of a getset to the other daemon's grant, the lock passed back and forth. */
  handoff: { p50Ms: number; p99Ms: number; handoffs: number; wrong: number };
}

/** The tier figures of the daemon on `socketPath`, through its status. */
async function tierStatus(socketPath: string): Promise<TierStatus | null> {
  const cache = await connect({ socketPath, autoStart: false, clientName: 'bench status' });
  try {
    return (await cache.status()).tier;
  } finally {
    await cache.close();
  }
}

/**
 * hoard with a shared tier: a redis-server of the bench's own (configured as README recommends) and two daemons
 * sharing every scope through it, standing in for two machines, beside a daemon without a tier. Local hits with the
 * tier against without, measured in turns in the same run; shared-tier hits (the second daemon reading what the
 * first wrote); and a getset lock handed from one daemon to the other.
 */
async function measureTier(): Promise<TierFigures> {
  const valueBytes = 1024;
  const dir = await mkdtemp(join(tmpdir(), 'hoard-bench-'));
  const servers: Awaited<ReturnType<typeof startHoard>>[] = [];
  try {
    const redisServer = await startRedis(join(dir, 'r'), [
      ...['--save', '', '--appendonly', 'yes', '--appendfsync', 'everysec'],
      ...['--maxmemory', '1gb', '--maxmemory-policy', 'volatile-lru'],
    ]);
    servers.push(redisServer);
    const tierFlags = ['--max-size', 'unlimited', '--tier', `unix://${redisServer.endpoint}`, '--share', '*=shared'];
    const plain = await startHoard(join(dir, 'p'), ['--max-size', 'unlimited']);
    servers.push(plain);
    const writer = await startHoard(join(dir, 'a'), tierFlags);
    servers.push(writer);
    const reader = await startHoard(join(dir, 'b'), tierFlags);
    servers.push(reader);
    const base = { system: 'hoard', keys: KEYS, valueBytes, seconds: SECONDS };
    await runWorker({ ...base, endpoint: plain.endpoint, kind: 'preload', inFlight: 64, startAt: 0 });
    await runWorker({ ...base, endpoint: writer.endpoint, kind: 'preload', inFlight: 64, startAt: 0 });

    const modes = QUICK ? MODES.filter((mode) => mode.processes === 1) : MODES;
    interface Run {
      results: LoopResult[];
      cpuNs: number;
    }
    // The CPU time each daemon uses while the other one is measured, and for how long: its background work (for the
    // tier, its heartbeat and change log), measured on the side.
    const idle = new Map([plain, writer].map((server) => [server, { cpuNs: 0, ms: 0 }]));
    const loop = async (server: Awaited<ReturnType<typeof startHoard>>, mode: (typeof MODES)[number], other: typeof server): Promise<Run> => {
      const startAt = Date.now() + 300;
      const [cpuBefore, otherBefore, startedMs] = [await cpuNs(server.pid), await cpuNs(other.pid), performance.now()];
      const jobs = Array.from({ length: mode.processes }, () =>
        runWorker({ ...base, seconds: HIT_SECONDS, endpoint: server.endpoint, kind: 'loop', getShare: 1, inFlight: mode.inFlight, startAt }),
      );
      const results = (await Promise.all(jobs)) as LoopResult[];
      const used = (await cpuNs(server.pid)) - cpuBefore;
      const otherIdle = idle.get(other)!;
      otherIdle.cpuNs += (await cpuNs(other.pid)) - otherBefore;
      otherIdle.ms += performance.now() - startedMs;
      return { results, cpuNs: used };
    };
    const opsOf = (run: Run): number => run.results.reduce((total, r) => total + r.ops / (r.elapsedMs / 1000), 0);
    const p50Of = (run: Run): number => percentile(run.results.flatMap((r) => r.getMs).sort((a, b) => a - b), 50);
    const cpuOf = (run: Run): number => run.cpuNs / 1000 / run.results.reduce((total, r) => total + r.ops, 0);
    const localHits: TierFigures['localHits'] = [];
    // One unmeasured run on each first: right after its preload a daemon is slower (compactions, code not yet
    // optimised), which would count against whichever goes first.
    await loop(plain, MODES[1], writer);
    await loop(writer, MODES[1], plain);
    for (const mode of modes) {
      const tierRuns: Run[] = [];
      const plainRuns: Run[] = [];
      // Many short runs in turns, so that the machine's noise falls on both alike: the 5% goal is finer than this
      // machine's noise between two runs, and the median of many pairs' ratios is not.
      for (let run = 0; run < HIT_PAIRS; run++) {
        // Which goes first alternates, so that an effect of the order falls on both alike too.
        if (run % 2 === 0) {
          plainRuns.push(await loop(plain, mode, writer));
          tierRuns.push(await loop(writer, mode, plain));
        } else {
          tierRuns.push(await loop(writer, mode, plain));
          plainRuns.push(await loop(plain, mode, writer));
        }
      }
      localHits.push({
        mode: mode.name,
        tierOps: median(tierRuns.map(opsOf)),
        plainOps: median(plainRuns.map(opsOf)),
        pairRatios: tierRuns.map((run, n) => opsOf(run) / opsOf(plainRuns[n]!)),
        tierGetP50Ms: median(tierRuns.map(p50Of)),
        plainGetP50Ms: median(plainRuns.map(p50Of)),
        tierCpuUsPerOp: median(tierRuns.map(cpuOf)),
        plainCpuUsPerOp: median(plainRuns.map(cpuOf)),
        cpuPairRatios: tierRuns.map((run, n) => cpuOf(run) / cpuOf(plainRuns[n]!)),
      });
    }

    const idleCpuMsPerSecond = { tier: idle.get(writer)!.cpuNs / 1e6 / (idle.get(writer)!.ms / 1000), plain: idle.get(plain)!.cpuNs / 1e6 / (idle.get(plain)!.ms / 1000) };

    // The reader has none of the keys: each get is a local miss that Redis answers. Half the keys for each mode.
    const sharedHits: TierFigures['sharedHits'] = [];
    const half = KEYS / 2;
    for (const [n, mode] of MODES.filter((mode) => mode.processes === 1).entries()) {
      const range = { ...base, keys: half, firstKey: n * half };
      const result = (await runWorker({ ...range, endpoint: reader.endpoint, kind: 'once', inFlight: mode.inFlight, startAt: 0 })) as LoopResult & { missed: number };
      const sorted = [...result.getMs].sort((a, b) => a - b);
      sharedHits.push({
        mode: mode.name,
        gets: result.ops,
        missed: result.missed,
        opsPerSecond: result.ops / (result.elapsedMs / 1000),
        getP50Ms: percentile(sorted, 50),
        getP99Ms: percentile(sorted, 99),
      });
    }
    const again = (await runWorker({ ...base, keys: sharedHits[0]!.gets, endpoint: reader.endpoint, kind: 'once', inFlight: 1, startAt: 0 })) as LoopResult;
    const readerStatus = await tierStatus(reader.endpoint);

    const handoffJob: Job = { ...base, kind: 'tier-handoff', endpoint: '', endpoints: [writer.endpoint, reader.endpoint], inFlight: 1, startAt: 0 };
    const handed = (await runWorker(handoffJob)) as { gapsMs: number[]; wrong: number };
    const gaps = [...handed.gapsMs].sort((a, b) => a - b);
    return {
      localHits,
      idleCpuMsPerSecond,
      sharedHits,
      againGetP50Ms: percentile([...again.getMs].sort((a, b) => a - b), 50),
      reader: readerStatus,
      writer: await tierStatus(writer.endpoint),
      handoff: { p50Ms: percentile(gaps, 50), p99Ms: percentile(gaps, 99), handoffs: gaps.length, wrong: handed.wrong },
    };
  } finally {
    // The daemons first, Redis last.
    for (const server of servers.reverse()) await server.stop();
    await rm(dir, { recursive: true, force: true });
  }
}

const fmt = (n: number | null | undefined, digits = 1): string => (n === null || n === undefined || Number.isNaN(n) ? 'n/a' : n.toFixed(digits));
const kops = (n: number): string => `${(n / 1000).toFixed(1)}k`;

function table(
  points: Point[],
  memory: MemoryFigures[],
  handoff: Awaited<ReturnType<typeof measureHandoff>> | null,
  cold: number[],
  limit: LimitFigures | null,
  tier: TierFigures | null,
): string {
  const find = (system: string, valueBytes: number, mode: string): Point | undefined =>
    points.find((p) => p.system === system && p.valueBytes === valueBytes && p.mode === mode);
  // `--only tier` measures no system's loop: then there is no table of them.
  const lines = !points.length
    ? []
    : [
        `${KEYS} keys, 90% get / 10% set on uniform random keys, closed loop; medians of ${RUNS} run(s) of ${SECONDS} s (spread: min-max of the runs).`,
        'Ratios are to redis-server + ioredis measured in the same run (ops/s: higher is better for hoard; p50: lower is better); ' +
          "in brackets, the median of each run's ratio to the Redis run made beside it.",
        "Per request: the server process's CPU time (all threads, and its main thread's) and its read / write system calls (all threads), and the client processes' CPU time, medians of the runs.",
        '',
        '| values | mode | system | ops/s (spread) | vs redis | get p50 / p99 ms | set p50 / p99 ms | server CPU µs / reads / writes per request | client CPU µs per request |',
        '|---|---|---|---|---|---|---|---|---|',
      ];
  for (const valueBytes of VALUE_SIZES) {
    for (const mode of MODES) {
      const redis = find('redis', valueBytes, mode.name);
      for (const system of systems) {
        const p = find(system.name, valueBytes, mode.name);
        if (!p) continue;
        const spread = `${kops(Math.min(...p.runs))}-${kops(Math.max(...p.runs))}`;
        // Runs are made in turns, so each run of a system has a run of Redis beside it: the median of those pairs'
        // ratios (in brackets) is steadier than the ratio of the medians when other load comes and goes.
        const pairs = redis && redis.runs.length === p.runs.length ? p.runs.map((ops, n) => ops / redis.runs[n]!) : [];
        const ratio = redis ? `${fmt(p.opsPerSecond / redis.opsPerSecond, 2)}x${system.name !== 'redis' && pairs.length ? ` (${fmt(median(pairs), 2)}x)` : ''}` : 'n/a';
        const server =
          p.serverCpuUsPerOp === null
            ? 'n/a'
            : `${fmt(p.serverCpuUsPerOp, 1)} (main ${fmt(p.serverMainCpuUsPerOp, 1)}) / ${fmt(p.serverReadsPerOp, 2)} / ${fmt(p.serverWritesPerOp, 2)}`;
        lines.push(
          `| ${valueBytes / 1024} KiB | ${mode.name} | ${system.name} | ${kops(p.opsPerSecond)} (${spread}) | ${ratio} | ${fmt(p.getP50Ms, 3)} / ${fmt(p.getP99Ms, 3)} | ${fmt(p.setP50Ms, 3)} / ${fmt(p.setP99Ms, 3)} | ${server} | ${fmt(p.clientCpuUsPerOp, 1)} |`,
        );
      }
    }
  }
  const hoard1x1 = find('hoard', 1024, '1x1');
  const redis1x1 = find('redis', 1024, '1x1');
  if (hoard1x1 && redis1x1) lines.push('', `1 KiB 1x1 get p50: hoard ${fmt(hoard1x1.getP50Ms / redis1x1.getP50Ms, 2)}x redis's.`);
  for (const build of builds) {
    const other1x1 = find(build.name, 1024, '1x1');
    if (other1x1 && redis1x1) lines.push(`1 KiB 1x1 get p50: ${build.name} ${fmt(other1x1.getP50Ms / redis1x1.getP50Ms, 2)}x redis's.`);
  }
  const cacacheLines = VALUE_SIZES.flatMap((valueBytes) =>
    MODES.map((mode) => {
      const h = find('hoard', valueBytes, mode.name);
      const c = find('cacache', valueBytes, mode.name);
      return h && c ? `${valueBytes / 1024} KiB ${mode.name} ${fmt(h.opsPerSecond / c.opsPerSecond, 1)}x` : null;
    }),
  ).filter(Boolean);
  if (cacacheLines.length) lines.push('', `hoard vs cacache (ops/s): ${cacacheLines.join(', ')}.`);
  if (memory.length) lines.push('', '| process | values | RSS idle | RSS under load (peak) | RSS after |', '|---|---|---|---|---|');
  for (const m of memory.filter((m) => m.idleMiB !== null)) {
    lines.push(`| ${m.system} | ${m.valueBytes / 1024} KiB | ${fmt(m.idleMiB)} MiB | ${fmt(m.loadMiB)} MiB | ${fmt(m.afterMiB)} MiB |`);
  }
  if (handoff) lines.push('', `Lock hand-off, 8 processes on one key (${handoff.handoffs} hand-offs): p50 ${fmt(handoff.p50Ms, 3)} ms, p99 ${fmt(handoff.p99Ms, 3)} ms.`);
  if (cold.length) lines.push(`Cold start, connect() with no daemon to the first get: median ${fmt(median(cold), 0)} ms (runs: ${cold.map((t) => fmt(t, 0)).join(', ')}).`);
  if (limit) {
    const mib = (bytes: number): string => fmt(bytes / 1024 / 1024);
    lines.push('', `With --max-size at half the data set (${mib(limit.limitBytes)} MiB, 1 KiB values), against no limit in the same run:`);
    lines.push(limit.modes.map((m) => `${m.mode} ${fmt(m.limitedOps / m.unlimitedOps, 2)}x (${kops(m.limitedOps)} vs ${kops(m.unlimitedOps)} ops/s)`).join(', ') + '.');
    const e = limit.eviction;
    lines.push(
      `Evicting ${e.evictedItems} items at start took ${fmt(e.evictionMs / 1000, 2)} s; ${e.gets} gets (32 in flight) meanwhile: ` +
        `p50 ${fmt(e.duringP50Ms, 3)} ms, p99 ${fmt(e.duringP99Ms, 3)} ms (${fmt(e.duringP99Ms / e.afterP99Ms, 2)}x the p99 once it was done, ${fmt(e.afterP99Ms, 3)} ms).`,
    );
  }
  if (tier) {
    lines.push('', 'hoard with a shared tier (a redis-server on a Unix socket with appendonly yes and volatile-lru; two daemons sharing every scope):');
    const quartiles = (values: number[]): string => {
      const sorted = [...values].sort((a, b) => a - b);
      return `${fmt(percentile(sorted, 25), 3)}-${fmt(percentile(sorted, 75), 3)}`;
    };
    lines.push(
      `Local hits (gets only), with the tier against without: ${HIT_PAIRS} pair${HIT_PAIRS === 1 ? '' : 's'} of ${HIT_SECONDS} s runs in turns per mode; ` +
        "the median of the pairs' ratios (middle half of the pairs in brackets) of ops/s (higher is better) and of the daemon's CPU time per get " +
        '(all its threads; lower is better, and far less sensitive to other load): ' +
        tier.localHits
          .map(
            (h) =>
              `${h.mode} ops/s ${fmt(median(h.pairRatios), 3)}x (${quartiles(h.pairRatios)}), CPU per get ${fmt(median(h.cpuPairRatios), 3)}x ` +
              `(${quartiles(h.cpuPairRatios)}; ${fmt(h.tierCpuUsPerOp, 1)} vs ${fmt(h.plainCpuUsPerOp, 1)} µs; ` +
              `medians ${kops(h.tierOps)} vs ${kops(h.plainOps)} ops/s, get p50 ${fmt(h.tierGetP50Ms, 3)} vs ${fmt(h.plainGetP50Ms, 3)} ms)`,
          )
          .join('; ') +
        '.',
    );
    lines.push(
      `Idle, while the other daemon was measured: the tier's daemon used ${fmt(tier.idleCpuMsPerSecond.tier, 2)} ms of CPU a second, ` +
        `the plain one ${fmt(tier.idleCpuMsPerSecond.plain, 2)} ms (the tier's background work: its heartbeat and change log).`,
    );
    lines.push(
      'Shared-tier hits (a local miss on the second daemon, read from Redis and kept): ' +
        tier.sharedHits
          .map((h) => `${h.mode} ${kops(h.opsPerSecond)} gets/s, p50 ${fmt(h.getP50Ms, 3)} / p99 ${fmt(h.getP99Ms, 3)} ms (${h.gets} keys, ${h.missed} missed)`)
          .join(', ') +
        `; the same keys read again, now local: p50 ${fmt(tier.againGetP50Ms, 3)} ms.`,
    );
    const [w, r] = [tier.writer, tier.reader];
    if (w && r) {
      lines.push(
        `Tier figures: the first daemon ${w.sharedWrites} shared writes, ${w.errors} errors; the second ${r.sharedHits} shared hits, ` +
          `${r.sharedMisses} shared misses, ${r.errors} errors, Redis round trip p50 ${fmt(r.latencyP50Ms, 3)} ms.`,
      );
    }
    const h = tier.handoff;
    lines.push(`Lock hand-off across daemons (a getset's lease released on one, granted to a waiter on the other, ${h.handoffs} hand-offs): p50 ${fmt(h.p50Ms, 3)} ms, p99 ${fmt(h.p99Ms, 3)} ms; grants without the value just written: ${h.wrong}.`);
  }
  return lines.join('\n');
}

async function main(): Promise<void> {
const points: Point[] = [];
const memory: MemoryFigures[] = [];
for (const valueBytes of VALUE_SIZES) await measureSize(valueBytes, points, memory);
const withHoard = !args['points-only'] && systems.some((s) => s.name === 'hoard');
const handoff = withHoard ? await measureHandoff() : null;
const cold = withHoard ? await measureColdStart() : [];
const limit = withHoard ? await measureLimit() : null;
const tier = withTier && hasRedis ? await measureTier() : null;
const markdown = table(points, memory, handoff, cold, limit, tier);
await mkdir('.bench', { recursive: true });
await writeFile('.bench/results.json', `${JSON.stringify({ date: new Date().toISOString(), quick: QUICK, runs: RUNS, seconds: SECONDS, points, memory, handoff, cold, limit, tier }, null, 2)}\n`);
await writeFile('.bench/results.md', `${markdown}\n`);
console.log(markdown);
}

void main();
