import { mkdir } from 'node:fs/promises';
import { dirname } from 'node:path';
import { checkSocketPathLength } from '../src/wire/paths.js';
import { checkSocketDirectory } from '../src/wire/trusted-socket-path.js';

/**
 * Creates the socket's directory with mode 0700 if it is missing, and refuses one that a client would not trust:
 * a symbolic link, a directory another user owns or that group or others may write to, or one under a directory
 * that another user could rename (see {@link checkSocketDirectory}), since whoever can do that can replace the socket.
 * @throws CacheError `CACHE_UNSAFE_DIRECTORY` or `CACHE_SOCKET_PATH_TOO_LONG`.
 */
export async function prepareSocketDirectory(socketPath: string): Promise<string> {
  checkSocketPathLength(socketPath);
  const directory = dirname(socketPath);
  await mkdir(directory, { recursive: true, mode: 0o700 });
  await checkSocketDirectory(directory);
  return directory;
}
