import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';

/** The project's root, where child scripts resolve packages from. */
export const PROJECT_ROOT = fileURLToPath(new URL('../..', import.meta.url));

export interface ChildResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs a program to its end and resolves to its exit code and what it printed (as UTF-8). */
export function runProcess(file: string, args: readonly string[], options: { cwd: string; env?: NodeJS.ProcessEnv }): Promise<ChildResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, { cwd: options.cwd, env: options.env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

/** Runs an ES module given as source in a new Node process started in the project's root. */
export function runModule(source: string, args: string[] = []): Promise<ChildResult> {
  return runProcess(process.execPath, ['--input-type=module', '-e', source, '--', ...args], { cwd: PROJECT_ROOT });
}

/** Tries to open a LevelDB directory from another process; resolves to the error code, or 'opened'. */
export async function openFromAnotherProcess(directory: string): Promise<string> {
  const result = await runModule(
    `import { Level } from 'level';
     const db = new Level(process.argv[process.argv.length - 1]);
     try { await db.open(); console.log('opened'); await db.close(); }
     catch (error) { console.log(error.cause?.code ?? error.code); }`,
    [directory],
  );
  return result.stdout.trim() || `failed: ${result.stderr}`;
}
