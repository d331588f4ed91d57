import { connect as netConnect, Socket } from 'node:net';
import type { Readable } from 'node:stream';
import { trustedSocketPath } from '../src/wire/trusted-socket-path.js';

/** What one read of a daemon socket may take: more than a Unix socket holds unread, so one read drains it. */
const READ_BUFFER_BYTES = 256 * 1024;

/** The readers that take a socket's chunks in place (see {@link readChunks}), by socket. */
const borrowers = new WeakMap<Readable, (chunk: Buffer) => void>();

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
      onread: {
        buffer: Buffer.allocUnsafeSlow(READ_BUFFER_BYTES),
        callback: (bytes, buffer) => {
          const chunk = (buffer as Buffer).subarray(0, bytes);
          const borrower = borrowers.get(attempt);
          if (borrower) {
            borrower(chunk);
            return true;
          }
          // A stream reader gets a copy, and a full stream stops the reading until it is read.
          return attempt.push(Buffer.from(chunk));
        },
      },
    });
    attempt.once('connect', () => {
      attempt.removeListener('error', reject);
      attempt.on('error', () => {});
      resolve(attempt);
    });
    attempt.once('error', reject);
  });
}

/**
 * Hands what arrives on `input` to `onChunk`, and starts it flowing. A socket from {@link connectSocket} lends
 * its chunks (`borrowed`: valid only during the call, copy what is kept); other streams, and what a socket had
 * buffered before, come as chunks of their own.
 */
export function readChunks(input: Readable, onChunk: (chunk: Buffer, borrowed: boolean) => void): void {
  if (input instanceof Socket) borrowers.set(input, (chunk) => onChunk(chunk, true));
  input.on('data', (chunk: Buffer) => onChunk(chunk, false));
  input.resume();
}
