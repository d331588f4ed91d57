import { mkdir, stat } from 'node:fs/promises';
import { homedir, tmpdir, userInfo } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { CacheError } from '../src/errors.js';

/** Linux keeps 108 bytes for a socket path, the last one a NUL; Node silently cuts longer paths. */
export const MAX_SOCKET_PATH_BYTES = 107;

function uid(): number {
  return process.getuid?.() ?? userInfo().uid;
}

/**
 * The socket path: `HOARD_SOCKET`, else `$XDG_RUNTIME_DIR/hoard/hoard.sock`, else a per-user directory under
 * the temp directory (`/tmp/hoard-<uid>/hoard.sock`).
 */
export function defaultSocketPath(env: NodeJS.ProcessEnv = process.env): string {
  if (env.HOARD_SOCKET) return resolve(env.HOARD_SOCKET);
  const runtime = env.XDG_RUNTIME_DIR;
  return runtime ? join(runtime, 'hoard', 'hoard.sock') : join(tmpdir(), `hoard-${uid()}`, 'hoard.sock');
}

/** The data directory: `HOARD_DATA_DIR`, else `$XDG_CACHE_HOME/hoard`, else `~/.cache/hoard`. */
export function defaultDataDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.HOARD_DATA_DIR) return resolve(env.HOARD_DATA_DIR);
  return join(env.XDG_CACHE_HOME || join(homedir(), '.cache'), 'hoard');
}

/** The background daemon's log file: `$XDG_STATE_HOME/hoard/daemon.log`, else `~/.local/state/hoard/daemon.log`. */
export function defaultLogFile(env: NodeJS.ProcessEnv = process.env): string {
  return join(env.XDG_STATE_HOME || join(homedir(), '.local', 'state'), 'hoard', 'daemon.log');
}

/** Refuses a socket path that Unix sockets would silently truncate. */
export function checkSocketPathLength(socketPath: string): void {
  const bytes = Buffer.byteLength(socketPath);
  if (bytes > MAX_SOCKET_PATH_BYTES) {
    throw new CacheError(
      'CACHE_SOCKET_PATH_TOO_LONG',
      `The socket path ${socketPath} is ${bytes} bytes long; Unix sockets allow at most ${MAX_SOCKET_PATH_BYTES}. ` +
        'Choose a shorter path with --socket or HOARD_SOCKET.',
    );
  }
}

/**
 * Creates the socket's directory with mode 0700 if it is missing, and refuses one that another user owns
 * or that group or others may write to, since whoever can write there can replace the socket.
 */
export async function prepareSocketDirectory(socketPath: string): Promise<string> {
  checkSocketPathLength(socketPath);
  const directory = dirname(socketPath);
  await mkdir(directory, { recursive: true, mode: 0o700 });
  const info = await stat(directory);
  if (info.uid !== uid()) {
    throw new CacheError(
      'CACHE_UNSAFE_DIRECTORY',
      `The socket directory ${directory} belongs to user ${info.uid}, not to you (${uid()}): another user could ` +
        'impersonate the daemon. Remove it, or choose another path with --socket or HOARD_SOCKET.',
    );
  }
  if ((info.mode & 0o022) !== 0) {
    throw new CacheError(
      'CACHE_UNSAFE_DIRECTORY',
      `The socket directory ${directory} is writable by group or others (mode ${(info.mode & 0o777).toString(8)}): ` +
        `another user could replace the socket. Run \`chmod 700 ${directory}\`, or choose another path with --socket.`,
    );
  }
  return directory;
}
