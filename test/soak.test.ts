import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { expect, onTestFinished, test } from 'vitest';
import { connect } from '../client/index.js';
import { CLIENT_MODULE, startDaemonProcess, startModule } from './support/processes.js';
import { tempDir } from './support/temp-dir.js';

/**
 * `npm run soak` runs 60 s; `npm test` runs this short variant, long enough for the daemon's memory to have reached
 * its working size (about 120 MiB here, reached after some tens of thousands of calls) before the last third: in
 * 6 s it was still growing then, by 15 to 25 MiB at a few thousand calls a second; in 12 s by up to 15; in 20 s by 2 to 6.
 */
const SECONDS = Number(process.env.SOAK_SECONDS ?? 20);
const PROCESSES = 4;
const CONNECTIONS_PER_PROCESS = 16;
const COUNTERS = 8;

/** One client process: 16 connections, each a loop of mixed calls until the deadline; prints a JSON report. */
const WORKER = `
import { connect } from ${CLIENT_MODULE};
const [socketPath, seconds] = process.argv.slice(-2);
const deadline = Date.now() + Number(seconds) * 1000;
const report = { ops: 0, errors: [], increments: {} };
async function loop(n) {
  const cache = await connect({ socketPath, autoStart: false, clientName: 'soak ' + process.pid + '/' + n });
  const counters = cache.withScope('counters');
  const scratch = cache.withScope('scratch').withScope('s' + (n % 4));
  while (Date.now() < deadline) {
    const pick = Math.random();
    const key = 'k' + Math.floor(Math.random() * 50);
    try {
      if (pick < 0.4) {
        const got = await scratch.get(key);
        await got.item?.value();
        await got.release();
      } else if (pick < 0.6) {
        await scratch.set(key, { n, at: Date.now(), pad: 'x'.repeat(Math.floor(Math.random() * 2048)) });
      } else if (pick < 0.9) {
        const counter = 'c' + Math.floor(Math.random() * ${COUNTERS});
        const gs = await counters.getset(counter);
        try {
          await gs.set(((gs.item ? await gs.item.value() : 0)) + 1);
          report.increments[counter] = (report.increments[counter] ?? 0) + 1;
        } finally {
          await gs.release();
        }
      } else if (pick < 0.98) {
        await scratch.delete(key);
      } else {
        await scratch.clear();
      }
      report.ops++;
    } catch (error) {
      report.errors.push(String(error && error.code) + ': ' + String(error && error.message));
    }
  }
  await cache.close();
}
await Promise.all(Array.from({ length: ${CONNECTIONS_PER_PROCESS} }, (_, n) => loop(n)));
console.log(JSON.stringify(report));
`;

test(`soak: ${PROCESSES * CONNECTIONS_PER_PROCESS} connections for ${SECONDS} s: no errors, no lost updates, no locks left, RSS levels off`, async () => {
  const dir = await tempDir('hd-');
  const daemon = await startDaemonProcess({ socketPath: join(dir, 's.sock'), dataDir: join(dir, 'data') });
  const rss = async (): Promise<number> => Number(/VmRSS:\s+(\d+)/.exec(await readFile(`/proc/${daemon.child.pid}/status`, 'utf8'))![1]) / 1024;
  const samples: number[] = [];
  const sampler = setInterval(() => void rss().then((mib) => samples.push(mib)), 250);
  onTestFinished(() => clearInterval(sampler));

  const workers = Array.from({ length: PROCESSES }, () => startModule(WORKER, [daemon.socketPath, String(SECONDS)]));
  expect(await Promise.all(workers.map((w) => w.exited))).toEqual(Array(PROCESSES).fill(0));
  clearInterval(sampler);
  const reports = workers.map((w) => JSON.parse(w.lines.at(-1)!) as { ops: number; errors: string[]; increments: Record<string, number> });

  expect(reports.flatMap((r) => r.errors)).toEqual([]);
  const expected = new Map<string, number>();
  for (const report of reports) for (const [counter, n] of Object.entries(report.increments)) expected.set(counter, (expected.get(counter) ?? 0) + n);
  const cache = await connect<number>({ socketPath: daemon.socketPath, autoStart: false });
  onTestFinished(() => cache.close());
  for (const [counter, increments] of expected) {
    await using got = await cache.withScope('counters').get(counter);
    expect(await got.item!.value(), counter).toBe(increments);
  }
  // The daemon notices the workers' closed connections on its own schedule: status round trips until it has.
  let status = await cache.status();
  while (status.connections > 1) {
    await new Promise((resolve) => setImmediate(resolve));
    status = await cache.status();
  }
  expect(status).toMatchObject({ locksHeld: 0, waiters: 0, connections: 1 });

  // A plateau: the last third of the run needs no more memory than the rest did, give or take 24 MiB (noise on a
  // loaded machine reached 11 MiB; a leak of one handle per call would add far more over the run).
  const third = Math.floor(samples.length / 3);
  const earlierPeak = Math.max(...samples.slice(0, samples.length - third));
  const laterPeak = Math.max(...samples.slice(samples.length - third));
  const ops = reports.reduce((total, r) => total + r.ops, 0);
  const increments = [...expected.values()].reduce((a, b) => a + b, 0);
  console.log(
    `soak: ${SECONDS} s, ${ops} calls (${Math.round(ops / SECONDS)}/s), ${increments} contended increments, 0 errors; ` +
      `daemon RSS ${samples[0]?.toFixed(0)} MiB at start, peak ${earlierPeak.toFixed(0)} MiB before the last third, ${laterPeak.toFixed(0)} MiB in it`,
  );
  expect(laterPeak).toBeLessThan(earlierPeak + 24);
}, (SECONDS + 60) * 1000);
