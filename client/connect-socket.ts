import { connect as netConnect, type Socket } from 'node:net';
import { lentReads, readChunks } from '../src/wire/lent-reads.js';
import { trustedSocketPath } from '../src/wire/trusted-socket-path.js';

/**
 * Connects a socket to `socketPath` once it has checked that only the user could have put the socket there (see
 * {@link trustedSocketPath}); rejects with the socket's error (ENOENT, ECONNREFUSED) when nobody listens. The socket
 * reads into one buffer of its own, so that a read costs no allocation and takes all there is.
 * @throws CacheError `CACHE_UNSAFE_DIRECTORY` when another user could have put or replaced the socket.
 */
export async function connectSocket(socketPath: string): Promise<Socket> {
  const path = await trustedSocketPath(socketPath);
  return new Promise<Socket>((resolve, reject) => {
    const attempt: Socket = netConnect({
      path,
      onread: lentReads(() => attempt),
    });
    attempt.once('connect', () => {
      attempt.removeListener('error', reject);
      attempt.on('error', () => {});
      resolve(attempt);
    });
    attempt.once('error', reject);
  });
}

export { readChunks };
