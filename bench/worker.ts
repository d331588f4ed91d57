/**
 * One benchmark process: `node worker.js '<job as JSON>'`. Prints one line of JSON with what it measured.
 * Jobs: `preload` (write every key), `loop` (a closed loop of 90% get / 10% set, or `getShare`), `handoff` (contend
 * for one hoard lock), `cold` (connect with no daemon running, then one get), `evicting` (gets while the daemon
 * evicts, until its status shows the size within the limit), `once` (get each key of a range once: through a daemon
 * that has none of them, shared-tier hits), `tier-handoff` (getset locks handed between two daemons sharing a tier).
 */
import { connect } from '../client/index.js';
import { SYSTEMS } from './systems.js';

export interface Job {
  kind: 'preload' | 'loop' | 'handoff' | 'cold' | 'evicting' | 'once' | 'tier-handoff';
  system: string;
  endpoint: string;
  keys: number;
  valueBytes: number;
  inFlight: number;
  seconds: number;
  /** Epoch milliseconds at which all workers of a run start, so that they overlap. */
  startAt: number;
  dataDir?: string;
  /** The share of gets in a `loop` (default 0.9; the rest are sets). */
  getShare?: number;
  /** The first key of a `once` job's range (`keys` long). */
  firstKey?: number;
  /** A `tier-handoff`'s two daemons. */
  endpoints?: string[];
}

export interface LoopResult {
  ops: number;
  elapsedMs: number;
  /** The worker process's own CPU time during the loop, in microseconds (user + system). */
  cpuUs?: number;
  getMs: number[];
  setMs: number[];
}

const now = (): number => performance.timeOrigin + performance.now();
/** How long a `tier-handoff` holder holds the lock with the other daemon waiting. */
const HOLD_MS = 10;
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
  if (job.kind === 'tier-handoff') return tierHandoff();
  const client = await system.open(job.endpoint);
  const value = new Uint8Array(job.valueBytes).fill(7);
  const keys = Array.from({ length: job.keys }, (_, n) => `key-${(job.firstKey ?? 0) + n}`);
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
  if (job.kind === 'once') {
    // Each key once, in order, until the range or the time runs out; `missed` counts the keys that had no value.
    let next = 0;
    let missed = 0;
    const reader = async (): Promise<void> => {
      while (next < keys.length && now() < deadline) {
        const key = keys[next++]!;
        const began = now();
        if ((await client.get(key)) === undefined) missed++;
        getMs.push(now() - began);
      }
    };
    await Promise.all(Array.from({ length: job.inFlight }, reader));
    const result = { ops: getMs.length, elapsedMs: now() - start, getMs, setMs, missed };
    await client.close();
    return result;
  }
  const getShare = job.getShare ?? 0.9;
  const cpuBefore = process.cpuUsage();
  const loop = async (): Promise<void> => {
    while (now() < deadline) {
      const key = keys[Math.floor(Math.random() * keys.length)]!;
      const began = now();
      if (Math.random() < getShare) {
        await client.get(key);
        getMs.push(now() - began);
      } else {
        await client.set(key, value);
        setMs.push(now() - began);
      }
    }
  };
  await Promise.all(Array.from({ length: job.inFlight }, loop));
  const cpu = process.cpuUsage(cpuBefore);
  const result: LoopResult = { ops: getMs.length + setMs.length, elapsedMs: now() - start, cpuUs: cpu.user + cpu.system, getMs, setMs };
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

/**
 * A getset lock handed from one daemon to the other through the shared tier, each round on a new item so that both
 * miss it locally: one daemon's client takes the item (its lease), writes the round's number and, once the other
 * daemon's getset has had time to reach Redis and wait for the lease, releases it; the time from that release to the
 * other's grant is one hand-off. The daemons swap roles each round. `wrong` counts grants that did not carry the value
 * just written.
 */
async function tierHandoff(): Promise<{ gapsMs: number[]; wrong: number }> {
  const caches = await Promise.all(
    job.endpoints!.map((socketPath, n) => connect<Uint8Array>({ socketPath, codec: 'binary', autoStart: false, clientName: `bench tier handoff ${n}` })),
  );
  const gapsMs: number[] = [];
  let wrong = 0;
  const deadline = now() + job.seconds * 1000;
  for (let round = 0; now() < deadline; round++) {
    const [holder, waiter] = round % 2 === 0 ? [caches[0]!, caches[1]!] : [caches[1]!, caches[0]!];
    const id = `handoff-${round}`;
    const held = await holder.getset(id);
    const value = new Uint8Array(8);
    new DataView(value.buffer).setFloat64(0, round);
    await held.set!(value);
    let grantedAt = 0;
    const waiting = waiter.getset(id).then((handle) => ((grantedAt = now()), handle));
    // The waiter's local lock is free, so its request reaches Redis within a few milliseconds and waits there.
    await new Promise((resolve) => setTimeout(resolve, HOLD_MS));
    const releasedAt = now();
    await held.release();
    const granted = await waiting;
    gapsMs.push(grantedAt - releasedAt);
    const got = await granted.item?.value();
    if (!got || new DataView(got.buffer, got.byteOffset, got.byteLength).getFloat64(0) !== round) wrong++;
    await granted.release();
  }
  await Promise.all(caches.map((cache) => cache.close()));
  return { gapsMs, wrong };
}

void main().then((result) => process.stdout.write(`${JSON.stringify(result)}\n`));
