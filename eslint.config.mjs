// ESLint: the few rules that catch real bugs, and the layering of src/, daemon/ and client/.
// `npm run lint`; test/layering.test.ts proves that the layering rules fail a wrong import.
import js from '@eslint/js';
import { defineConfig, globalIgnores } from 'eslint/config';
import tseslint from 'typescript-eslint';

/** Restricted-import patterns: the import source is matched against `regex`, and the message says which arrow it breaks. */
const forbid = (regex, message) => ({ regex, message });

const DAEMON = forbid('(^|/)daemon(/|$)', 'client/ and src/ never import the daemon: a client starts it by path at run time.');
// The project's client/ (`../client/x`), not a package such as `@redis/client` (Redis's client library, which the daemon uses).
const CLIENT = forbid('^(?!@redis/client$).*(^|/)client(/|$)', 'daemon/ and src/ never import the client.');
// `hoard-cache/client` must load no native addon: only src/level/** loads LevelDB, and only src/level-cache.ts and
// src/index.ts (the public API table) import src/level/**.
const NATIVE = [
  forbid('^(level|classic-level)(/|$)', 'LevelDB is a native addon: only src/level/** imports it.'),
  forbid('^(\\./|(\\.\\./)+)(src/)?level(/|$)', 'src/level/** loads LevelDB: only src/level-cache.ts, src/index.ts and daemon/ import it.'),
  forbid('(^|/)level-cache(\\.js)?$', 'LevelCache loads LevelDB: only src/index.ts and daemon/ import it.'),
  forbid('^(\\./|(\\.\\./)+)(src/)?index(\\.js)?$', "src/index.ts is the public API table and exports LevelCache: import the module you need."),
  forbid('^(\\./|(\\.\\./)+)src/?$', "src/index.ts is the public API table and exports LevelCache: import the module you need."),
  forbid('^hoard-cache$', "'hoard-cache' exports LevelCache: import the module you need from ../src/."),
];

// src/, daemon/ and client/ compile to CommonJS: `import.meta` does not exist there.
const NO_IMPORT_META = {
  selector: "MetaProperty[meta.name='import']",
  message: 'src/, daemon/ and client/ compile to CommonJS, where import.meta does not exist: use __dirname or __filename.',
};

/** A dynamic `import('…')` of a source the patterns forbid: no-restricted-imports sees only static imports. */
const noDynamicImport = ({ regex, message }) => ({
  selector: `ImportExpression[source.value=/${regex.replaceAll('/', '\\/')}/]`,
  message: `${message} (a dynamic import is an import too)`,
});

const layer = (patterns) => ({
  'no-restricted-imports': ['error', { patterns }],
  'no-restricted-syntax': ['error', NO_IMPORT_META, ...patterns.map(noDynamicImport)],
  // A require() is an import that the rule above cannot see.
  '@typescript-eslint/no-require-imports': 'error',
  // stdout is the protocol in stdio mode: log to stderr or the log file (process.stderr.write).
  'no-console': 'error',
});

export default defineConfig(
  globalIgnores(['dist/', '.bench/', 'coverage/', '**/node_modules/']),

  // Every file: core rules that find mistakes, not style.
  {
    files: ['**/*.{ts,mts,js,mjs,cjs}'],
    rules: {
      eqeqeq: 'error',
      'no-fallthrough': 'error',
      'no-unsafe-finally': 'error',
      'no-self-compare': 'error',
      'no-constant-binary-expression': 'error',
      'no-unsafe-optional-chaining': 'error',
      'no-async-promise-executor': 'error',
      'no-cond-assign': 'error',
      'no-dupe-else-if': 'error',
      'no-duplicate-case': 'error',
      'no-self-assign': 'error',
      'no-sparse-arrays': 'error',
      'no-loss-of-precision': 'error',
      'no-compare-neg-zero': 'error',
      'use-isnan': 'error',
      'valid-typeof': 'error',
    },
  },

  // TypeScript, with type information from tsconfig.json (which includes src, daemon, client, bench, test).
  {
    files: ['**/*.{ts,mts}'],
    extends: [tseslint.configs.base],
    languageOptions: {
      parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname },
    },
    linterOptions: { reportUnusedDisableDirectives: 'error' },
    rules: {
      // A promise nobody awaits loses its rejection; `void promise` marks one left unawaited on purpose.
      '@typescript-eslint/no-floating-promises': ['error', { ignoreVoid: true }],
      // An async callback where a void one is expected (event handlers, forEach): its rejection goes nowhere.
      '@typescript-eslint/no-misused-promises': 'error',
      '@typescript-eslint/await-thenable': 'error',
      // Returning a promise from inside try/catch/finally or an `await using` block without awaiting it: the catch
      // does not see its rejection, and the handle is disposed before it settles.
      '@typescript-eslint/return-await': ['error', 'in-try-catch'],
      // A switch over a union with no default must handle every member, so adding one is caught at each switch.
      '@typescript-eslint/switch-exhaustiveness-check': ['error', { considerDefaultExhaustiveForUnions: true }],
      // `text += chunk` with a Buffer chunk decodes each chunk alone and splits a multi-byte character at a chunk
      // boundary (use setEncoding); an object in a string is '[object Object]'.
      '@typescript-eslint/restrict-plus-operands': 'error',
      '@typescript-eslint/no-base-to-string': 'error',
      '@typescript-eslint/no-explicit-any': 'error',
      // tsc already reports these (noUnusedLocals, noUnusedParameters, noFallthroughCasesInSwitch).
      '@typescript-eslint/no-unused-vars': 'off',
      'no-fallthrough': 'off',
    },
  },

  // The layers: client/ and daemon/ import src/ and never each other; src/ imports neither.
  { files: ['client/**/*.ts'], rules: layer([DAEMON, ...NATIVE]) },
  { files: ['daemon/**/*.ts'], rules: layer([CLIENT]) },
  { files: ['src/**/*.ts'], rules: layer([DAEMON, CLIENT]) },
  {
    files: ['src/**/*.ts'],
    ignores: ['src/level/**', 'src/level-cache.ts', 'src/index.ts'],
    rules: layer([DAEMON, CLIENT, ...NATIVE]),
  },

  // Plain JavaScript (examples/ is CommonJS run by Node): the basic rules, no type information.
  {
    files: ['**/*.{js,cjs}'],
    extends: [js.configs.recommended],
    languageOptions: {
      sourceType: 'commonjs',
      globals: {
        require: 'readonly',
        module: 'writable',
        exports: 'writable',
        __dirname: 'readonly',
        __filename: 'readonly',
        Buffer: 'readonly',
        process: 'readonly',
        console: 'readonly',
        setTimeout: 'readonly',
        clearTimeout: 'readonly',
        setInterval: 'readonly',
        clearInterval: 'readonly',
        setImmediate: 'readonly',
        clearImmediate: 'readonly',
        queueMicrotask: 'readonly',
        structuredClone: 'readonly',
        URL: 'readonly',
        TextEncoder: 'readonly',
        TextDecoder: 'readonly',
        AbortController: 'readonly',
        AbortSignal: 'readonly',
      },
    },
  },
  { files: ['**/*.mjs'], extends: [js.configs.recommended], languageOptions: { sourceType: 'module' } },
);
