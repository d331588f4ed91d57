import { ESLint, type Linter } from 'eslint';
import { describe, expect, test } from 'vitest';
import tseslint from 'typescript-eslint';
import { PROJECT_ROOT } from './support/child.js';

// The project's eslint.config.mjs, without type information: the layering rules need none, and a snippet linted
// under a made-up path (client/x.ts) is in no TypeScript project.
const eslint = new ESLint({
  cwd: PROJECT_ROOT,
  overrideConfig: { files: ['**/*.ts'], ...tseslint.configs.disableTypeChecked },
});

const LAYERING_RULES = new Set(['no-restricted-imports', 'no-restricted-syntax', '@typescript-eslint/no-require-imports']);

/** The layering errors (rule ids) that ESLint reports for `code` placed at `filePath`. */
async function layeringErrors(code: string, filePath: string): Promise<string[]> {
  const [result] = await eslint.lintText(code, { filePath });
  return result!.messages.filter((message) => message.severity === 2 && LAYERING_RULES.has(message.ruleId ?? '')).map((message) => message.ruleId!);
}

/** One test per case: `code` placed at `filePath` gets exactly the layering errors `expected`. */
function layeringCases(title: string, expected: string[], cases: [filePath: string, code: string][]): void {
  describe(title, () => {
    test.each(cases)('%s: %s', async (filePath, code) => {
      expect(await layeringErrors(code, filePath)).toEqual(expected);
    });
  });
}

layeringCases('layering: a wrong import fails the lint', ['no-restricted-imports'], [
  ['client/x.ts', "import { startDaemon } from '../daemon/index.js';"],
  ['client/x.ts', "import type { Session } from '../daemon/session.js';"],
  ['client/x.ts', "export { startDaemon } from '../daemon/index.js';"],
  ['client/x.ts', "import { startDaemon } from 'hoard-cache/daemon';"],
  ['daemon/x.ts', "import { connect } from '../client/index.js';"],
  ['daemon/x.ts', "import { connect } from 'hoard-cache/client';"],
  ['src/x.ts', "import { startDaemon } from '../daemon/index.js';"],
  ['src/x.ts', "import { RemoteCache } from '../client/remote-cache.js';"],
  ['src/wire/x.ts', "import type { Session } from '../../daemon/session.js';"],
  ['src/level/x.ts', "import { connect } from '../../client/index.js';"],
]);

layeringCases('layering: a dynamic import is an import too', ['no-restricted-syntax'], [
  ['client/x.ts', "export const load = () => import('../daemon/index.js');"],
  ['daemon/x.ts', "export const load = () => import('../client/index.js');"],
  ['client/x.ts', "export const load = () => import('level');"],
  ['src/wire/x.ts', "export const load = () => import('../level/level-store.js');"],
]);

layeringCases('layering: hoard-cache/client and src/ outside src/level load no native addon', ['no-restricted-imports'], [
  ['client/x.ts', "import { Level } from 'level';"],
  ['client/x.ts', "import { ClassicLevel } from 'classic-level';"],
  ['client/x.ts', "import { LevelStore } from '../src/level/level-store.js';"],
  ['client/x.ts', "import { LevelCache } from '../src/level-cache.js';"],
  ['client/x.ts', "import { CacheError } from '../src/index.js';"],
  ['client/x.ts', "import { CacheError } from 'hoard-cache';"],
  ['src/x.ts', "import { Level } from 'level';"],
  ['src/x.ts', "import { LevelStore } from './level/level-store.js';"],
  ['src/x.ts', "import { LevelCache } from './level-cache.js';"],
  ['src/wire/x.ts', "import { LevelStore } from '../level/level-store.js';"],
  ['src/wire/x.ts', "import { CacheError } from '../index.js';"],
]);

layeringCases('layering: the allowed arrows pass', [], [
  ['client/x.ts', "import { CacheError } from '../src/errors.js';\nimport { Get } from '../src/wire/protocol.js';"],
  ['daemon/x.ts', "import { LevelStore } from '../src/level/level-store.js';\nimport { Get } from '../src/wire/protocol.js';"],
  ['src/level/x.ts', "import { Level } from 'level';\nimport { CacheError } from '../errors.js';"],
  ['src/level-cache.ts', "import { LevelStore } from './level/level-store.js';"],
  ['src/index.ts', "export { LevelCache } from './level-cache.js';"],
  ['src/wire/x.ts', "import { CacheError } from '../errors.js';"],
  ['test/x.test.ts', "import { startDaemon } from '../daemon/index.js';\nimport { connect } from '../client/index.js';"],
]);

describe('layering: src/, daemon/ and client/ compile to CommonJS', () => {
  test.each(['src/x.ts', 'daemon/x.ts', 'client/x.ts'])('%s may not use import.meta or require()', async (filePath) => {
    expect(await layeringErrors('export const here = import.meta.url;', filePath)).toEqual(['no-restricted-syntax']);
    expect(await layeringErrors("export const daemon: unknown = require('../daemon/main.js');", filePath)).toEqual([
      '@typescript-eslint/no-require-imports',
    ]);
  });

  test('new.target is not import.meta', async () => {
    expect(await layeringErrors('export class A { constructor() { void new.target; } }', 'src/x.ts')).toEqual([]);
  });
});

test('the tree has no layering errors', async () => {
  const results = await eslint.lintFiles(['src', 'daemon', 'client']);
  expect(results.length).toBeGreaterThan(20);
  const errors = results.flatMap((result) =>
    result.messages
      .filter((message: Linter.LintMessage) => LAYERING_RULES.has(message.ruleId ?? ''))
      .map((message) => `${result.filePath}:${message.line} ${message.ruleId}: ${message.message}`),
  );
  expect(errors).toEqual([]);
});
