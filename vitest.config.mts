import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { defineConfig } from 'vitest/config';

// Daemons that tests start in the background log here, not in the user's state directory.
const stateHome = mkdtempSync(join(tmpdir(), 'hoard-test-state-'));

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    reporters: ['default', './test/support/summary-reporter.ts'],
    testTimeout: 20_000,
    hookTimeout: 20_000,
    env: { XDG_STATE_HOME: stateHome },
  },
});
