import childProcess from 'node:child_process';
import { syncBuiltinESMExports } from 'node:module';

// The unit lane (see vitest.config.mts) starts no process: a test that tries fails here, with the remedy.
const refuse = (name: string) => (): never => {
  throw new Error(
    `child_process.${name}: this test file is in the unit lane, which starts no process; ` +
      'take it off the UNIT list in vitest.config.mts (or out of test/unit/) so that it runs in the system lane',
  );
};
const spawners = ['spawn', 'spawnSync', 'exec', 'execSync', 'execFile', 'execFileSync', 'fork'] as const;
for (const name of spawners) (childProcess as unknown as Record<string, unknown>)[name] = refuse(name);
// Modules that imported these by name (`import { spawn } from 'node:child_process'`) see the change too.
syncBuiltinESMExports();
