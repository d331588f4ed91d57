/**
 * Who could have put what is at a socket path, or could replace it: the checks that keep another local user from
 * impersonating the daemon (the way ssh checks the path to `authorized_keys`).
 *
 * The rule: every directory on the way is owned by root or by the user and is not writable by group or others,
 * unless it is sticky (as `/tmp` is: others may add names there, but not rename or remove the user's); the socket's
 * own directory is a real directory (not a symbolic link) owned by the user and not writable by group or others; and
 * the socket is a socket (not a link) owned by the user. Then no one but the user and root can put anything at the
 * path or replace it after the check. Read and search bits are allowed: they let no one in, since the socket itself
 * is 0600. Symbolic links above the socket's directory are resolved first, and the real path is what is checked and
 * what is used.
 */
import { lstat, realpath } from 'node:fs/promises';
import type { Stats } from 'node:fs';
import { basename, dirname, join, resolve, sep } from 'node:path';
import { CacheError } from '../errors.js';
import { uid as currentUid } from './paths.js';

/** The way out that every refusal offers. */
const ELSEWHERE = 'or choose another path with --socket or HOARD_SOCKET';

function unsafe(message: string): CacheError {
  return new CacheError('CACHE_UNSAFE_DIRECTORY', message);
}

function mode(info: Stats): string {
  return (info.mode & 0o7777).toString(8).padStart(3, '0');
}

function kind(info: Stats): string {
  if (info.isSymbolicLink()) return 'a symbolic link';
  if (info.isFile()) return 'a regular file';
  if (info.isDirectory()) return 'a directory';
  if (info.isSocket()) return 'a socket';
  return 'neither a directory nor a socket';
}

async function lstatOrMissing(path: string): Promise<Stats | undefined> {
  try {
    return await lstat(path);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw error;
  }
}

/**
 * The real path of `directory`'s deepest existing ancestor, each directory on the way checked, and the names below
 * it that do not exist yet.
 */
async function checkAncestors(directory: string, forPath: string, uid: number): Promise<{ real: string; missing: string[] }> {
  let parent = dirname(directory);
  const missing: string[] = [];
  let real: string;
  for (;;) {
    try {
      real = await realpath(parent);
      break;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT' || dirname(parent) === parent) throw error;
      missing.unshift(basename(parent));
      parent = dirname(parent);
    }
  }
  const parts = real.split(sep).filter(Boolean);
  for (let depth = 0; depth <= parts.length; depth++) {
    const path = sep + parts.slice(0, depth).join(sep);
    const info = await lstat(path);
    if (!info.isDirectory()) {
      // Only a race with a rename makes this happen, since realpath resolved every link.
      throw unsafe(`${path}, on the way to ${forPath}, is ${kind(info)}, not a directory: choose another path with --socket or HOARD_SOCKET.`);
    }
    if (info.uid !== 0 && info.uid !== uid) {
      throw unsafe(
        `${path}, on the way to ${forPath}, belongs to user ${info.uid}, who could replace what is in it and impersonate ` +
          "the hoard daemon: choose a path through directories of your own or root's, with --socket or HOARD_SOCKET.",
      );
    }
    if ((info.mode & 0o022) !== 0 && (info.mode & 0o1000) === 0) {
      throw unsafe(
        `${path}, on the way to ${forPath}, is writable by others and not sticky (mode ${mode(info)}): another user could ` +
          `rename what is in it and put their own in its place. Run \`chmod go-w ${path}\` (or \`chmod +t ${path}\`), ${ELSEWHERE}.`,
      );
    }
  }
  return { real, missing };
}

/** Refuses a socket directory (from `lstat`) that is not a real directory of the user's that only the user may change. */
function checkOwnDirectory(directory: string, info: Stats, uid: number): void {
  if (info.isSymbolicLink()) {
    throw unsafe(
      `The socket directory ${directory} is a symbolic link: whoever owns it could point it at a daemon of theirs. ` +
        `Remove it (\`rm ${directory}\`; the daemon creates a directory of its own), ${ELSEWHERE}.`,
    );
  }
  if (!info.isDirectory()) throw unsafe(`The socket directory ${directory} is ${kind(info)}, not a directory: choose another path with --socket or HOARD_SOCKET.`);
  if (info.uid !== uid) {
    throw unsafe(
      `The socket directory ${directory} belongs to user ${info.uid}, not to you (${uid}): another user could ` +
        `impersonate the daemon. Remove it (as that user or root), ${ELSEWHERE}.`,
    );
  }
  if ((info.mode & 0o022) !== 0) {
    throw unsafe(
      `The socket directory ${directory} is writable by group or others (mode ${mode(info)}): another user could ` +
        `replace the socket. Run \`chmod 700 ${directory}\`, ${ELSEWHERE}.`,
    );
  }
}

/**
 * Checks the socket's directory `directory` and the directories on the way to it (see the rule above), for a daemon
 * about to listen there; it exists by then.
 * @throws CacheError `CACHE_UNSAFE_DIRECTORY`, with what is wrong and how to fix it.
 */
export async function checkSocketDirectory(directory: string, options: { uid?: number } = {}): Promise<void> {
  const uid = options.uid ?? currentUid();
  const absolute = resolve(directory);
  const { real, missing } = await checkAncestors(absolute, absolute, uid);
  const info = await lstat(join(real, ...missing, basename(absolute)));
  checkOwnDirectory(absolute, info, uid);
}

/**
 * The error for a socket whose directory is missing: no daemon answers there, and none may be reached through a path
 * that was not checked, since another user could make the directory (in a sticky `/tmp`) before the connection.
 */
function noSocket(socketPath: string): NodeJS.ErrnoException {
  return Object.assign(new Error(`connect ENOENT ${socketPath}`), { code: 'ENOENT', errno: -2, syscall: 'connect', address: socketPath });
}

/**
 * Checks `socketPath` before a client connects to it (see the rule above), and resolves to the path to connect to:
 * the same socket through real directories, so that no link can be repointed between the check and the connection.
 * A missing socket in a checked directory is no danger (only the user could put one there); the path comes back as
 * it was given.
 * @throws an `ENOENT` error, as connecting would, when the socket's directory is missing (nobody answers there).
 * @throws CacheError `CACHE_UNSAFE_DIRECTORY`, with what is wrong and how to fix it.
 */
export async function trustedSocketPath(socketPath: string, options: { uid?: number } = {}): Promise<string> {
  const uid = options.uid ?? currentUid();
  const absolute = resolve(socketPath);
  const directory = dirname(absolute);
  const { real, missing } = await checkAncestors(directory, absolute, uid);
  if (missing.length > 0) throw noSocket(socketPath);
  const realDirectory = join(real, basename(directory));
  const directoryInfo = await lstatOrMissing(realDirectory);
  if (!directoryInfo) throw noSocket(socketPath);
  checkOwnDirectory(directory, directoryInfo, uid);
  const realSocket = join(realDirectory, basename(absolute));
  const info = await lstatOrMissing(realSocket);
  if (!info) return socketPath;
  if (!info.isSocket()) {
    throw unsafe(
      `${absolute} is ${kind(info)}, not a socket: hoard connects only to a socket that is yours. ` +
        `${info.isSymbolicLink() ? `Remove the link (\`rm ${absolute}\`)` : 'Move it away'}, ${ELSEWHERE}.`,
    );
  }
  if (info.uid !== uid) {
    throw unsafe(`The socket ${absolute} belongs to user ${info.uid}, not to you (${uid}): it is not your hoard daemon's. Remove it, ${ELSEWHERE}.`);
  }
  return realSocket;
}
