/**
 * `npm run build && node dist/bench/client-cpu.js [<dist> ...]`: the hoard client's own CPU time per get (get, value,
 * release; 1 KiB, 32 in flight) in one process, against a daemon it starts on a fresh directory, for this build and
 * each other build's `dist/` named (with a package.json beside it, and its dependencies where Node finds them), in
 * turns; the median over the rounds per build. Steadier than `npm run bench`'s ops/s on a shared machine.
 *
 *   node dist/bench/client-cpu.js [--rounds 7] [--gets 8000] /tmp/main-build/dist
 */
import { execFileSync } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { parseArgs } from 'node:util';

const IN_FLIGHT = 32;
const WARM_UP_GETS = 500;

const { values: args, positionals } = parseArgs({
  options: { rounds: { type: 'string', default: '7' }, gets: { type: 'string', default: '8000' }, child: { type: 'string' } },
  allowPositionals: true,
});

/** One measurement in this process, with the client of `dist`: prints the CPU µs per get. */
async function measure(dist: string): Promise<void> {
  const { connect } = require(join(dist, 'client', 'index.js')) as typeof import('../client/index.js');
  const dir = await mkdtemp(join(tmpdir(), 'hoard-client-cpu-'));
  const cache = await connect<Uint8Array>({ socketPath: join(dir, 's.sock'), dataDir: join(dir, 'data'), codec: 'binary', clientName: 'bench client-cpu' });
  try {
    await cache.set('k', new Uint8Array(1024).fill(7));
    const once = async (): Promise<void> => {
      const got = await cache.get('k');
      await got.item?.value();
      await got.release();
    };
    for (let n = 0; n < WARM_UP_GETS; n++) await once();
    const perLoop = Math.ceil(Number(args.gets) / IN_FLIGHT);
    const before = process.cpuUsage();
    await Promise.all(Array.from({ length: IN_FLIGHT }, async () => {
      for (let n = 0; n < perLoop; n++) await once();
    }));
    const cpu = process.cpuUsage(before);
    process.stdout.write(`${(cpu.user + cpu.system) / (perLoop * IN_FLIGHT)}\n`);
  } finally {
    await cache.close();
    // The daemon connect started stops once idle; its directory goes now.
    await rm(dir, { recursive: true, force: true }).catch(() => {});
  }
}

function main(): void {
  const builds = [dirname(__dirname), ...positionals.map((dist) => resolve(dist))];
  const results = builds.map(() => [] as number[]);
  for (let round = 0; round < Number(args.rounds); round++) {
    builds.forEach((dist, index) => {
      const out = execFileSync(process.execPath, [__filename, '--child', dist, '--gets', args.gets], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
      results[index]!.push(Number(out.trim()));
    });
  }
  builds.forEach((dist, index) => {
    const sorted = [...results[index]!].sort((a, b) => a - b);
    const median = sorted[Math.floor(sorted.length / 2)]!;
    console.log(`${dist}: client CPU per get ${median.toFixed(1)} µs (rounds: ${results[index]!.map((us) => us.toFixed(1)).join(', ')})`);
  });
}

if (args.child !== undefined) void measure(args.child).then(() => process.exit(0));
else main();
