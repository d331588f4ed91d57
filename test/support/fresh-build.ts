import { spawnSync } from 'node:child_process';
import { readdirSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import type { TestProject } from 'vitest/node';
import { PROJECT_ROOT } from './child.js';

declare module 'vitest' {
  export interface ProvidedContext {
    /** Why the system tests must not run: dist/ is out of date and could not be built. Null when it is fresh. */
    staleBuild: string | null;
  }
}

/** The folders that `npm run build` compiles into dist/ and that the system tests run from there. */
const SOURCE_DIRS = ['src', 'daemon', 'client'];
const CONFIGS = ['tsconfig.json', 'tsconfig.build.json'];

function mtimeMs(path: string): number | undefined {
  try {
    return statSync(path).mtimeMs;
  } catch {
    return undefined;
  }
}

function* sources(dir: string): Generator<string> {
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) yield* sources(path);
    else if (entry.name.endsWith('.ts') && !entry.name.endsWith('.d.ts')) yield path;
  }
}

/** Why dist/ is out of date (a source newer than what was built from it, or not built at all), or undefined. */
export function staleness(): string | undefined {
  const newestConfig = Math.max(...CONFIGS.map((name) => mtimeMs(join(PROJECT_ROOT, name)) ?? 0));
  for (const dir of SOURCE_DIRS) {
    for (const source of sources(join(PROJECT_ROOT, dir))) {
      const name = relative(PROJECT_ROOT, source);
      const built = mtimeMs(join(PROJECT_ROOT, 'dist', name.replace(/\.ts$/, '.js')));
      if (built === undefined) return `dist/ has no build of ${name}`;
      if (built < mtimeMs(source)!) return `${name} is newer than its build in dist/`;
      if (built < newestConfig) return `a tsconfig file is newer than dist/${name.replace(/\.ts$/, '.js')}`;
    }
  }
  return undefined;
}

/** Builds dist/ when it is out of date; resolves to why the system tests cannot run, or null. */
function freshBuild(): string | null {
  const why = staleness();
  if (why === undefined) return null;
  process.stderr.write(`hoard tests: ${why}; building (npm run build) before the system tests, which run dist/\n`);
  const tsc = join(PROJECT_ROOT, 'node_modules/typescript/bin/tsc');
  // What `npm run build` runs, but without emptying dist/ first (another run of the suite in this checkout may be
  // using it), and a failed build writes nothing, so that dist/ stays out of date and the next run refuses as well.
  const build = spawnSync(process.execPath, [tsc, '-p', 'tsconfig.build.json', '--noEmitOnError'], { cwd: PROJECT_ROOT, encoding: 'utf8' });
  if (build.status === 0) return null;
  return (
    `The system tests run dist/, which is out of date (${why}), and the build failed, so they cannot run:\n` +
    `${build.stdout}${build.stderr}${build.error ? String(build.error) : ''}\n` +
    'Fix the build (npm run build), or run the unit lane alone (npm run test:unit).'
  );
}

/**
 * The system tests start daemons, the CLI and client scripts from dist/, so they must never run a stale build: this
 * builds first when any source is newer than its build, in watch mode before every rerun too. When the build fails,
 * every system test file fails with the compiler's errors (test/support/built.ts), and none runs.
 */
export default function setup(project: TestProject): void {
  project.provide('staleBuild', freshBuild());
  project.onTestsRerun(() => project.provide('staleBuild', freshBuild()));
}
