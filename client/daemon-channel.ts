import { connect as netConnect, Socket } from 'node:net';
import type { Readable } from 'node:stream';
import { CacheError, type CacheErrorCode } from '../src/errors.js';
import type { EncodedValue } from '../src/store.js';
import type { InitializeResult, StatusResult } from '../src/protocol.js';

/** An item as the daemon sends it: the stored bytes and the name of their encoding, not decoded yet. */
export interface ChannelItem {
  modified: number;
  encoding: string;
  bytes: Uint8Array;
}

export interface CallOptions<R> {
  /** Aborting rejects the call at once with the signal's reason and cancels the request at the daemon. */
  signal?: AbortSignal | undefined;
  /** Receives a result that arrives after the call was aborted, so that a lock granted meanwhile can be released. */
  abandoned?: (result: R) => void;
}

export interface GetAnswer {
  handle: number;
  item: ChannelItem | null;
}

export interface GetSetAnswer {
  /** `null` when `wait` was false and the lock was taken. */
  handle: number | null;
  item: ChannelItem | null;
}

/** How a connection's byte stream is ended: gently first, then for good. */
export interface Transport {
  end(): void;
  destroy(): void;
  /** Resolves once whatever is behind the transport (a child process) is gone. */
  gone?: Promise<void>;
}

/**
 * One connection to the daemon after the handshake, in whichever transport was agreed: the calls of the
 * protocol, with the daemon's errors turned back into `CacheError`s. Scope paths and ids arrive checked.
 */
export interface DaemonChannel {
  /** What the daemon said of itself in the handshake. */
  readonly info: InitializeResult;
  /** Whether the connection has closed. */
  readonly lost: boolean;
  /** Resolves once the connection has closed, for whatever reason. */
  readonly lostPromise: Promise<void>;
  get(scope: readonly string[], id: string, options?: CallOptions<GetAnswer>): Promise<GetAnswer>;
  getset(scope: readonly string[], id: string, wait: boolean, options?: CallOptions<GetSetAnswer>): Promise<GetSetAnswer>;
  handleSet(handle: number, value: EncodedValue): Promise<void>;
  /** Releases a handle; one released over a lost connection is dropped, since the daemon released it already. */
  release(handle: number): void;
  /** @throws CacheError `CACHE_VALUE_TOO_LARGE` before sending a message larger than the daemon accepts. */
  set(scope: readonly string[], id: string, value: EncodedValue, modified?: number): Promise<void>;
  delete(scope: readonly string[], id: string): Promise<void>;
  clear(scope: readonly string[]): Promise<void>;
  status(): Promise<StatusResult>;
  /** Closes the connection; pending calls reject with `CACHE_CLOSED`. */
  close(): Promise<void>;
}

/** How long closing waits for the daemon to close its side before cutting the connection. */
const CLOSE_GRACE_MS = 1000;

/** Ends `transport` gently, cuts it if the daemon has not closed its side within a second, and waits until it is gone. */
export async function endTransport(transport: Transport, lost: Promise<void>): Promise<void> {
  transport.end();
  const cut = setTimeout(() => transport.destroy(), CLOSE_GRACE_MS);
  cut.unref();
  await lost;
  clearTimeout(cut);
}

/** Whether connecting failed because no daemon listens, or one that was stopping hung up on us. */
export function isNoDaemon(error: unknown): boolean {
  const code = (error as { code?: unknown })?.code;
  return code === 'ENOENT' || code === 'ECONNREFUSED' || code === 'ECONNRESET' || code === 'EPIPE' || code === 'CACHE_CONNECTION_LOST';
}

export function lostError(): CacheError {
  return new CacheError('CACHE_CONNECTION_LOST', 'The connection to the hoard daemon closed; the next call reconnects.');
}

export function closedError(): CacheError {
  return new CacheError('CACHE_CLOSED', 'The cache is closed.');
}

/** The error a daemon's coded answer stands for; codes only the wire knows (such as `CACHE_CANCELLED`) keep their name. */
export function fromWireError(code: string, message: string): CacheError {
  if (code.startsWith('CACHE_')) return new CacheError(code as CacheErrorCode, message);
  return new CacheError('CACHE_INTERNAL', `The hoard daemon answered with ${code}: ${message}`);
}

/**
 * Refuses a value whose message would exceed the daemon's limit, which would otherwise close the connection.
 * @throws CacheError `CACHE_VALUE_TOO_LARGE`.
 */
export function checkMessageSize(info: InitializeResult, bytes: number, what: string): void {
  const limit = info.capabilities.maxMessageBytes;
  if (bytes > limit) {
    throw new CacheError('CACHE_VALUE_TOO_LARGE', `This value takes ${what}, and the daemon accepts messages of at most ${limit} bytes.`);
  }
}

/** What one read of a daemon socket may take: more than a Unix socket holds unread, so one read drains it. */
const READ_BUFFER_BYTES = 256 * 1024;

/** The readers that take a socket's chunks in place (see {@link readChunks}), by socket. */
const borrowers = new WeakMap<Readable, (chunk: Buffer) => void>();

/**
 * Connects a socket to `socketPath`; rejects with the socket's error (ENOENT, ECONNREFUSED) when nobody listens.
 * The socket reads into one buffer of its own, so that a read costs no allocation and takes all there is.
 */
export function connectSocket(socketPath: string): Promise<Socket> {
  return new Promise<Socket>((resolve, reject) => {
    const attempt: Socket = netConnect({
      path: socketPath,
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
