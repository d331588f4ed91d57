import { access, cp, mkdir, mkdtemp, readdir, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, relative, sep } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { VERSION } from '../src/version.js';
import { type ChildResult, PROJECT_ROOT, runProcess } from './support/child.js';
import { daemonPids, waitForExit } from './support/processes.js';

// The package as users get it: packed, installed into a project of its own outside the repository, and bundled.
// Packing builds (prepare), once for the whole file; on a busy machine that takes a while.
const PACK_TIMEOUT_MS = 180_000;
// As the suite's own bound: an npm install beside another test file on a busy machine took over 60 s.
const TEST_TIMEOUT_MS = 120_000;

/** This process's environment without npm's own variables (set when `npm test` runs us), plus `extra`. */
function cleanEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env = Object.fromEntries(Object.entries(process.env).filter(([name]) => !/^npm_/i.test(name)));
  for (const name of ['HOARD_SOCKET', 'HOARD_DATA_DIR', 'NODE_OPTIONS', 'NODE_PATH']) delete env[name];
  return { ...env, ...extra };
}

function run(file: string, args: string[], options: { cwd: string; env?: Record<string, string> }): Promise<ChildResult> {
  return runProcess(file, args, { cwd: options.cwd, env: cleanEnv(options.env) });
}

async function succeed(file: string, args: string[], options: { cwd: string; env?: Record<string, string> }): Promise<string> {
  const result = await run(file, args, options);
  if (result.code !== 0) throw new Error(`${file} ${args.join(' ')} exited with ${result.code}:\n${result.stderr}${result.stdout}`);
  return result.stdout;
}

/** Runs a script with Node from `cwd` and returns what it printed, as JSON. */
async function node(cwd: string, script: string, options: { type?: 'module' | 'commonjs'; args?: string[]; env?: Record<string, string> } = {}): Promise<unknown> {
  const flags = options.type === 'module' ? ['--input-type=module'] : [];
  return JSON.parse(await succeed(process.execPath, [...flags, '-e', script, '--', ...(options.args ?? [])], { cwd, env: options.env }));
}

let work: string;
/** The packed tarball and its file list, as npm reported it. */
let tarball: string;
let packed: string[];
/** A project that installed the tarball, and the package inside it. */
let project: string;
let pkg: string;
const sockets: string[] = [];

/** A fresh socket and data directory, under a short temp path (sockets allow 107 bytes). */
async function daemonPaths(name: string): Promise<{ socketPath: string; logFile: string; env: Record<string, string> }> {
  const dir = await mkdtemp(join(work, `${name}-`));
  const socketPath = join(dir, 's.sock');
  sockets.push(socketPath);
  return {
    socketPath,
    logFile: join(dir, 'state', 'hoard', 'daemon.log'),
    env: { HOARD_DATA_DIR: join(dir, 'data'), XDG_STATE_HOME: join(dir, 'state'), XDG_RUNTIME_DIR: dir },
  };
}

/** Stops the daemon on `socketPath` with the installed `hoard stop`, and waits for its process to end. */
async function stopDaemon(socketPath: string): Promise<void> {
  const pids = await daemonPids(socketPath);
  await succeed(process.execPath, [join(pkg, 'dist/client/bin.js'), '--socket', socketPath, 'stop'], { cwd: project });
  await Promise.all(pids.map(waitForExit));
}

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'hoard-pkg-'));
  // Pack a copy of the working tree without dist/, as `npm install <git url>` does with a clone: prepare must build
  // everything, nothing stale from an earlier build gets in, and the repository's dist/, which other test files
  // run concurrently, is left alone.
  const source = join(work, 'source');
  const skipped = new Set(['dist', '.git', '.bench']);
  await cp(PROJECT_ROOT, source, {
    recursive: true,
    filter: (path) => {
      const parts = relative(PROJECT_ROOT, path).split(sep);
      return !skipped.has(parts[0]!) && !parts.includes('node_modules') && !parts.at(-1)!.startsWith('.readme-example-');
    },
  });
  await symlink(join(PROJECT_ROOT, 'node_modules'), join(source, 'node_modules'));
  const [report] = JSON.parse(await succeed('npm', ['pack', '--json', '--pack-destination', work], { cwd: source })) as [
    { filename: string; files: { path: string }[] },
  ];
  tarball = join(work, report.filename);
  packed = report.files.map((file) => file.path).sort();

  project = join(work, 'project');
  await mkdir(project);
  await writeFile(join(project, 'package.json'), JSON.stringify({ name: 'hoard-consumer', version: '1.0.0', private: true }));
  await succeed('npm', ['install', tarball, '--no-audit', '--no-fund', '--prefer-offline'], { cwd: project });
  pkg = join(project, 'node_modules', 'hoard-cache');
}, PACK_TIMEOUT_MS);

afterAll(async () => {
  for (const socketPath of sockets) {
    for (const pid of await daemonPids(socketPath)) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // Already gone.
      }
    }
  }
  if (work) await rm(work, { recursive: true, force: true });
});

describe('installing from a folder', { timeout: TEST_TIMEOUT_MS }, () => {
  test('a folder whose dependencies are installed (prepare builds) gives a working package and command', async () => {
    // The copy that was packed: its node_modules is the repository's, and prepare has built its dist/.
    const folderProject = join(work, 'folder-project');
    await mkdir(folderProject);
    await writeFile(join(folderProject, 'package.json'), JSON.stringify({ name: 'folder-consumer', version: '1.0.0', private: true }));
    await succeed('npm', ['install', join(work, 'source'), '--no-audit', '--no-fund', '--prefer-offline'], { cwd: folderProject });
    expect(await node(folderProject, "console.log(JSON.stringify(typeof require('hoard-cache/client').connect));")).toBe('function');
    expect((await succeed('npx', ['--no-install', 'hoard', '--version'], { cwd: folderProject })).trim()).toBe(VERSION);
  });

  test('a fresh clone without its dependencies is refused with what to do, not "tsc: not found"', async () => {
    const clone = join(work, 'clone');
    await cp(join(work, 'source'), clone, {
      recursive: true,
      filter: (path) => !['node_modules', 'dist'].includes(relative(join(work, 'source'), path).split(sep)[0]!),
    });
    const folderProject = join(work, 'fresh-project');
    await mkdir(folderProject);
    await writeFile(join(folderProject, 'package.json'), JSON.stringify({ name: 'fresh-consumer', version: '1.0.0', private: true }));
    const result = await run('npm', ['install', clone, '--no-audit', '--no-fund', '--prefer-offline'], { cwd: folderProject });
    expect(result.code).not.toBe(0);
    expect(result.stderr).toMatch(/TypeScript is not installed there\. Run `npm ci` in that folder first/);
  });
});

describe('the packed package', { timeout: TEST_TIMEOUT_MS }, () => {
  test('holds what users need and nothing else', async () => {
    for (const file of ['LICENSE', 'README.md', 'package.json', 'dist/client/index.js', 'dist/client/bin.js', 'dist/daemon/main.js']) {
      expect(packed).toContain(file);
    }
    for (const types of ['dist/src/index.d.ts', 'dist/client/index.d.ts', 'dist/daemon/index.d.ts']) expect(packed).toContain(types);
    const unwanted = packed.filter(
      (file) =>
        !['LICENSE', 'README.md', 'package.json'].includes(file) &&
        (!/^dist\/(src|client|daemon)\//.test(file) || /\.(map|tsbuildinfo)$/.test(file) || (file.endsWith('.ts') && !file.endsWith('.d.ts'))),
    );
    expect(unwanted).toEqual([]);
    expect(await readFile(join(pkg, 'LICENSE'), 'utf8')).toMatch(/^MIT License/);
  });

  test('require and import of hoard-cache/client give the same module, and it maps no native addon', async () => {
    const report = `const natives = () => require('node:fs').readFileSync('/proc/self/maps', 'utf8').split('\\n').filter((line) => line.endsWith('.node'));`;
    const required = await node(
      project,
      `${report}
       const client = require('hoard-cache/client');
       const before = natives();
       // The check can see an addon: LevelDB's, which the daemon loads.
       require(require.resolve('classic-level', { paths: [require.resolve('hoard-cache')] }));
       console.log(JSON.stringify({ exports: Object.keys(client).sort(), natives: before, control: natives().length > 0 }));`,
    );
    expect(required).toEqual({ exports: ['RemoteCache', 'connect', 'connectStdio'], natives: [], control: true });
    const imported = await node(
      project,
      `import { createRequire } from 'node:module';
       const require = createRequire(process.cwd() + '/');
       const { connect } = await import('hoard-cache/client');
       ${report}
       console.log(JSON.stringify({ connect: typeof connect, natives: natives(), same: connect === require('hoard-cache/client').connect }));`,
      { type: 'module' },
    );
    expect(imported).toEqual({ connect: 'function', natives: [], same: true });
  });

  test('exports its three entry points by name, with types, and the daemon\u2019s entry script', async () => {
    const names = await node(
      project,
      `import { createRequire } from 'node:module';
       const require = createRequire(process.cwd() + '/');
       const names = (m) => Object.keys(m).filter((k) => k !== 'default' && k !== '__esModule').sort();
       console.log(JSON.stringify([
         names(await import('hoard-cache')), names(await import('hoard-cache/client')), names(await import('hoard-cache/daemon')),
         require.resolve('hoard-cache/daemon/main'),
       ]));`,
      { type: 'module' },
    );
    expect(names).toEqual([
      ['CacheError', 'LevelCache', 'MemoryCache', 'NoOpCache', 'isCacheError'],
      ['RemoteCache', 'connect', 'connectStdio'],
      ['MAX_SOCKET_PATH_BYTES', 'defaultDataDir', 'defaultSocketPath', 'startDaemon'],
      join(pkg, 'dist/daemon/main.js'),
    ]);
    for (const types of ['dist/src/index.d.ts', 'dist/client/index.d.ts', 'dist/daemon/index.d.ts']) await access(join(pkg, types));
  });

  test('require works as on Node 20 before 20.19, which could not require an ES module', async () => {
    const script = "for (const name of ['hoard-cache', 'hoard-cache/client', 'hoard-cache/daemon']) require(name); console.log('\"ok\"');";
    expect(JSON.parse(await succeed(process.execPath, ['--no-experimental-require-module', '-e', script], { cwd: project }))).toBe('ok');
  });

  test('npx hoard runs the installed command', async () => {
    const { version } = JSON.parse(await readFile(join(pkg, 'package.json'), 'utf8')) as { version: string };
    expect((await succeed('npx', ['--no-install', 'hoard', '--version'], { cwd: project })).trim()).toBe(version);
  });

  test('the README\u2019s examples for projects run against the installed package, in JavaScript and in TypeScript', async () => {
    const readme = await readFile(join(pkg, 'README.md'), 'utf8');
    const blocks = [...readme.matchAll(/<!-- installed example[^>]*-->\s*```(\w+)\n([\s\S]*?)```/g)].map(([, lang, code]) => ({ lang, code: code! }));
    expect(blocks.map((block) => block.lang)).toEqual(['js', 'json', 'ts']);
    const [js, tsconfig, ts] = blocks;
    await writeFile(join(project, 'example-js.mjs'), js!.code);
    await writeFile(join(project, 'tsconfig.json'), tsconfig!.code);
    await writeFile(join(project, 'example-ts.mts'), ts!.code);
    // The compiler and Node's types, as a project would have them among its devDependencies.
    await mkdir(join(project, 'node_modules/@types'), { recursive: true });
    await symlink(join(PROJECT_ROOT, 'node_modules/@types/node'), join(project, 'node_modules/@types/node'));
    await succeed(process.execPath, [join(PROJECT_ROOT, 'node_modules/typescript/bin/tsc'), '-p', project], { cwd: project });

    const { socketPath, env } = await daemonPaths('readme');
    const runEnv = { ...env, HOARD_SOCKET: socketPath };
    // The first starts a daemon through the installed package's own entry (no daemon option); both print the value.
    expect(await succeed(process.execPath, ['example-js.mjs'], { cwd: project, env: runEnv })).toBe('<h1>home</h1>\n');
    expect(await succeed(process.execPath, ['example-ts.mjs'], { cwd: project, env: runEnv })).toBe('<h1>home</h1>\n');
    expect(await daemonPids(socketPath)).toHaveLength(1);
    await stopDaemon(socketPath);
  });
});

// A consumer as an editor extension would be: bundled with its dependencies into one file, run from a folder with
// no node_modules, told where the daemon's entry is.
const CONSUMER = `
import { connect } from 'hoard-cache/client';

async function main() {
  const [entry, socketPath] = process.argv.slice(2);
  let cache;
  try {
    cache = await connect({ socketPath, clientName: 'bundled consumer', daemon: entry ? { entry } : undefined });
  } catch (error) {
    console.log(JSON.stringify({ code: error.code, message: error.message }));
    return;
  }
  try {
    let computed = false;
    const gs = await cache.getset('answer');
    try {
      if (!gs.item) {
        computed = true;
        await gs.set('computed by ' + process.pid);
      }
    } finally {
      await gs.release();
    }
    const got = await cache.get('answer');
    const value = await got.item.value();
    await got.release();
    console.log(JSON.stringify({ computed, value, daemonPid: (await cache.status()).pid }));
  } finally {
    await cache.close();
  }
}

void main();
`;

// esbuild's ES module output reaches Node's modules through a require of its own (README, "In an editor extension").
const ESM_BANNER = "import { createRequire } from 'node:module'; const require = createRequire(import.meta.url);";

describe.each([
  { format: 'cjs' as const, outfile: 'consumer.cjs' },
  { format: 'esm' as const, outfile: 'consumer.mjs' },
])('a consumer bundled with esbuild as $format', { timeout: TEST_TIMEOUT_MS }, ({ format, outfile }) => {
  let bundle: string;

  beforeAll(async () => {
    await writeFile(join(project, 'consumer.js'), CONSUMER);
    const folder = join(work, `bundle-${format}`);
    bundle = join(folder, outfile);
    const { build } = await import('esbuild');
    const result = await build({
      absWorkingDir: project,
      entryPoints: [join(project, 'consumer.js')],
      bundle: true,
      platform: 'node',
      format,
      outfile: bundle,
      banner: format === 'esm' ? { js: ESM_BANNER } : {},
      logLevel: 'silent',
    });
    expect(result.warnings).toEqual([]);
    expect(await readdir(folder)).toEqual([outfile]);
  }, TEST_TIMEOUT_MS);

  test('holds the client and none of LevelDB', async () => {
    const text = await readFile(bundle, 'utf8');
    expect(text).toContain('CACHE_DAEMON_START_FAILED');
    expect(text).not.toMatch(/classic-level|require\("(hoard-cache|vscode-jsonrpc|level)/);
  });

  test('without the daemon option, connect says to give it', async () => {
    const { socketPath, env } = await daemonPaths(`no-option-${format}`);
    const result = JSON.parse(await succeed(process.execPath, [bundle, '', socketPath], { cwd: join(bundle, '..'), env })) as {
      code: string;
      message: string;
    };
    expect(result.code).toBe('CACHE_DAEMON_START_FAILED');
    expect(result.message).toContain('daemon option');
    expect(await daemonPids(socketPath)).toEqual([]);
  });

  test('two processes start one daemon through the option and compute the value once', async () => {
    const { socketPath, logFile, env } = await daemonPaths(format);
    const entry = join(pkg, 'dist/daemon/main.js');
    const outputs = await Promise.all(
      [1, 2].map(() => succeed(process.execPath, [bundle, entry, socketPath], { cwd: join(bundle, '..'), env })),
    );
    const results = outputs.map((output) => JSON.parse(output) as { computed: boolean; value: string; daemonPid: number });
    expect(results.filter((result) => result.computed)).toHaveLength(1);
    expect(results[0]!.value).toMatch(/^computed by \d+$/);
    expect(results[1]!.value).toBe(results[0]!.value);
    expect(results[1]!.daemonPid).toBe(results[0]!.daemonPid);
    expect(await daemonPids(socketPath)).toEqual([results[0]!.daemonPid]);
    // One daemon listened; any other that was started found the data directory taken, said so and exited.
    expect((await readFile(logFile, 'utf8')).match(/listening on/g)).toHaveLength(1);
    // It is the installed package's daemon, started from the bundle's option.
    expect((await readFile(`/proc/${results[0]!.daemonPid}/cmdline`, 'utf8')).split('\0')).toContain(entry);
    await stopDaemon(socketPath);
  });
});
