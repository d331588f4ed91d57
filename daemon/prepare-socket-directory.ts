import { mkdir, stat } from 'node:fs/promises';
import { dirname } from 'node:path';
import { CacheError } from '../src/errors.js';
import { checkSocketPathLength, uid } from '../src/wire/paths.js';

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
