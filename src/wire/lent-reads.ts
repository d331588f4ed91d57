import { Socket } from 'node:net';
import type { Readable } from 'node:stream';

/** What one read of a socket may take: more than a Unix socket holds unread, so one read drains it. */
export const READ_BUFFER_BYTES = 256 * 1024;

/** The readers that take a socket's chunks in place (see {@link readChunks}), by socket. */
const borrowers = new WeakMap<Readable, (chunk: Buffer) => void>();

/**
 * The `onread` option that makes a socket read into one buffer of its own, so that a read costs no allocation and
 * takes all there is: a reader from {@link readChunks} borrows each chunk in place, any other stream reader gets a copy.
 * `socket` gives the socket the option is for, once it exists.
 */
export function lentReads(socket: () => Socket): { buffer: Buffer; callback: (bytes: number, buffer: Uint8Array) => boolean } {
  return {
    buffer: Buffer.allocUnsafeSlow(READ_BUFFER_BYTES),
    callback: (bytes, buffer) => {
      const chunk = (buffer as Buffer).subarray(0, bytes);
      const own = socket();
      const borrower = borrowers.get(own);
      if (borrower) {
        borrower(chunk);
        return true;
      }
      // A stream reader gets a copy, and a full stream stops the reading until it is read.
      return own.push(Buffer.from(chunk));
    },
  };
}

/**
 * Hands what arrives on `input` to `onChunk`, and starts it flowing. A socket made with {@link lentReads} lends its
 * chunks (`borrowed`: valid only during the call, copy what is kept); other streams, and what a socket had buffered
 * before, come as chunks of their own.
 */
export function readChunks(input: Readable, onChunk: (chunk: Buffer, borrowed: boolean) => void): void {
  if (input instanceof Socket) borrowers.set(input, (chunk) => onChunk(chunk, true));
  input.on('data', (chunk: Buffer) => onChunk(chunk, false));
  input.resume();
}
