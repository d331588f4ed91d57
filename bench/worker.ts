/**
 * One benchmark process: `node worker.js '<job as JSON>'`. Prints one line of JSON with what it measured.
 * Jobs: `preload` (write every key), `loop` (a closed loop of 90% get / 10% set), `handoff` (contend for one
 * hoard lock), `cold` (connect with no daemon running, then one get), `evicting` (gets while the daemon evicts, until
 * its status shows the size within the limit).
 */
import { connect } from '../client/index.js';
import { SYSTEMS } from './systems.js';

export interface Job {
  kind: 'preload' | 'loop' | 'handoff' | 'cold' | 'evicting';
  system: string;
  endpoint: string;
  keys: number;
  valueBytes: number;
  inFlight: number;
  seconds: number;
  /** Epoch milliseconds at which all workers of a run start, so that they overlap. */
  startAt: number;
  dataDir?: string;
}

export interface LoopResult {
  ops: number;
  elapsedMs: number;
  getMs: number[];
  setMs: number[];
}

const now = (): number => performance.timeOrigin + performance.now();
const job = JSON.parse(process.argv[2]!) as Job;

async function main(): Promise<unknown> {
  if (job.kind === 'cold') {
    const started = now();
    const cache = await connect({ socketPath: job.endpoint, dataDir: job.dataDir, clientName: 'bench cold start' });
    const got = await cache.get('missing');
    await got.release();
    const coldMs = now() - started;
    await cache.close();
    return { coldMs };
  }
  const system = SYSTEMS.find((s) => s.name === job.system)!;
  if (job.kind === 'handoff') {
    const cache = await connect({ socketPath: job.endpoint, autoStart: false, clientName: 'bench handoff' });
    const events: [number, number][] = [];
    await new Promise((resolve) => setTimeout(resolve, Math.max(0, job.startAt - Date.now())));
    const deadline = now() + job.seconds * 1000;
    while (now() < deadline) {
      const gs = await cache.getset('contended');
      const granted = now();
      // Hold it briefly: a turn of the event loop.
      await new Promise((resolve) => setImmediate(resolve));
      const released = now();
      await gs.release();
      events.push([granted, released]);
    }
    await cache.close();
    return { events };
  }
  if (job.kind === 'evicting') return evicting();
  const client = await system.open(job.endpoint);
  const value = new Uint8Array(job.valueBytes).fill(7);
  const keys = Array.from({ length: job.keys }, (_, n) => `key-${n}`);
  if (job.kind === 'preload') {
    for (let n = 0; n < keys.length; n += 64) await Promise.all(keys.slice(n, n + 64).map((key) => client.set(key, value)));
    await client.close();
    return {};
  }
  const getMs: number[] = [];
  const setMs: number[] = [];
  await new Promise((resolve) => setTimeout(resolve, Math.max(0, job.startAt - Date.now())));
  const start = now();
  const deadline = start + job.seconds * 1000;
  const loop = async (): Promise<void> => {
    while (now() < deadline) {
      const key = keys[Math.floor(Math.random() * keys.length)]!;
      const began = now();
      if (Math.random() < 0.9) {
        await client.get(key);
        getMs.push(now() - began);
      } else {
        await client.set(key, value);
        setMs.push(now() - began);
      }
    }
  };
  await Promise.all(Array.from({ length: job.inFlight }, loop));
  const result: LoopResult = { ops: getMs.length + setMs.length, elapsedMs: now() - start, getMs, setMs };
  await client.close();
  return result;
}

/** Gets of random keys, `inFlight` at a time, from now until the daemon's count is back within its limit. */
async function evicting(): Promise<{ getMs: number[]; elapsedMs: number; evictedItems: number }> {
  const cache = await connect<Uint8Array>({ socketPath: job.endpoint, codec: 'binary', autoStart: false, clientName: 'bench eviction' });
  const getMs: number[] = [];
  let done = false;
  const start = now();
  const watch = (async () => {
    for (;;) {
      const status = await cache.status();
      if (status.limitBytes !== null && status.sizeBytes <= status.limitBytes) return status;
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  })().finally(() => (done = true));
  const loop = async (): Promise<void> => {
    while (!done) {
      const began = now();
      const got = await cache.get(`key-${Math.floor(Math.random() * job.keys)}`);
      await got.item?.value();
      await got.release();
      getMs.push(now() - began);
    }
  };
  await Promise.all(Array.from({ length: job.inFlight }, loop));
  const status = await watch;
  const elapsedMs = now() - start;
  await cache.close();
  return { getMs, elapsedMs, evictedItems: status.evictions };
}

void main().then((result) => process.stdout.write(`${JSON.stringify(result)}\n`));
