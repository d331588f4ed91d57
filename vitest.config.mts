import { mkdtempSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { configDefaults, defineConfig } from 'vitest/config';

// Daemons that tests start in the background log here, not in the user's state directory.
const stateHome = mkdtempSync(join(tmpdir(), 'hoard-test-state-'));

/**
 * The fast lane, `npm run test:unit`: the test files that start no process (a daemon in the test's own process
 * counts, as long as nothing spawns one). It is a list, so that a new test file runs in the system lane until
 * someone has checked that it starts nothing and adds it here (or puts it in test/unit/). test/support/no-processes.ts
 * makes any attempt to start a process fail in this lane.
 */
const UNIT = [
  'test/unit/**/*.test.ts',
  'test/binary-transport.test.ts',
  'test/framed-message-reader.test.ts',
  'test/json-transport.test.ts',
  'test/frames.test.ts',
  'test/layering.test.ts',
  'test/level.test.ts',
  'test/local-backend-tier.test.ts',
  'test/tier-options.test.ts',
  'test/lock-table.test.ts',
  'test/lru-map.test.ts',
  'test/memory.test.ts',
  'test/readme.test.ts',
  'test/scope-path.test.ts',
];

export default defineConfig({
  test: {
    reporters: ['default', './test/support/summary-reporter.ts'],
    env: { XDG_STATE_HOME: stateHome },
    // Liveness bounds, not performance targets: the suite must pass on a machine busy with other work (with two
    // CPU-bound processes beside it on two cores, the slowest tests take several times as long as on an idle one).
    testTimeout: 120_000,
    hookTimeout: 120_000,
    projects: [
      {
        extends: true,
        test: {
          name: 'unit',
          include: UNIT,
          setupFiles: ['test/support/no-processes.ts'],
          // CPU-bound and starting nothing: one file per core but one (at least two) at a time, before the system lane.
          maxWorkers: Math.max(2, availableParallelism() - 1),
          sequence: { groupOrder: 0 },
        },
      },
      {
        // Everything else: tests that start daemons, the CLI, other Node processes or setpriv, which run dist/.
        extends: true,
        test: {
          name: 'system',
          include: ['test/**/*.test.ts'],
          exclude: [...configDefaults.exclude, ...UNIT],
          globalSetup: ['test/support/fresh-build.ts'],
          setupFiles: ['test/support/built.ts'],
          // Two files at a time, whatever the cores: these tests mostly wait (on Redis, daemons, child processes), so
          // two overlap well even on two cores. Each file keeps its own temp dirs, mount points, sockets and ports
          // (from port 0), so files do not collide; more at once would make the timing bounds of tier tests tight.
          maxWorkers: 2,
          sequence: { groupOrder: 1 },
        },
      },
    ],
  },
});
