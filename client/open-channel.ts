import type { Readable, Writable } from 'node:stream';
import { CacheError } from '../src/errors.js';
import { EnableReferences, Initialize, type InitializeParams, type InitializeResult, lspFrame, PROTOCOL_VERSION } from '../src/wire/protocol.js';
import { fromWireError } from '../src/wire/wire-error.js';
import { BinaryChannel } from './binary-channel.js';
import { type Channel, lostError, type Transport } from './channel.js';
import { connectSocket } from './connect-socket.js';
import { JsonChannel } from './json-channel.js';
import { readProbe } from './value-files.js';

export type TransportName = 'binary' | 'json';

export interface OpenOptions {
  clientName: string;
  /** The transport to ask for; default `'binary'`, with JSON kept when the daemon does not offer it. */
  transport?: TransportName;
  /** How long the daemon may take to answer the handshake; default 10 s. */
  handshakeTimeoutMs?: number;
  /**
   * Offer to read values' files by path (`cache/enableReferences`), which the daemon accepts only once the client has
   * read its probe file; default `false` here (`connect` and `connectStdio` default to `true`).
   */
  references?: boolean;
  /**
   * Offer to read values over the daemon's inline limit in chunks (`cache/readChunk`) when they are not read by
   * reference; default `false` (the CLI), `true` for `RemoteCache`.
   */
  chunks?: boolean;
}

/** The directory of values' files of each connection whose answers may carry file items. */
const referenceDirectories = new WeakMap<Channel, string>();

/** Where the file items answered on `channel` are; `undefined` while references are not enabled on it. */
export function referenceDirectoryOf(channel: Channel): string | undefined {
  return referenceDirectories.get(channel);
}

/**
 * Reads the daemon's probe and sends what it holds, without waiting for the answer: the daemon handles requests in
 * order, so every later answer carries file items once it has accepted. A probe that cannot be read (another mount
 * namespace), or a refusal, leaves the connection on bytes.
 */
function enableReferences(channel: Channel): void {
  const offered = channel.info.capabilities.references;
  if (!offered || typeof offered.probe !== 'string' || typeof offered.blobDirectory !== 'string') return;
  const token = readProbe(offered.probe);
  if (token === undefined) return;
  referenceDirectories.set(channel, offered.blobDirectory);
  channel.request(EnableReferences, { token }).then(
    ({ enabled }) => {
      if (!enabled) referenceDirectories.delete(channel);
    },
    () => referenceDirectories.delete(channel),
  );
}

const HEADER_END = '\r\n\r\n';
/** The longest answer to `initialize` worth waiting for. */
const MAX_ANSWER_BYTES = 64 * 1024;

/**
 * Sends `initialize` as one LSP-framed JSON-RPC request and reads its answer, before any other message: the
 * answer decides the transport of the rest of the connection. Bytes after the answer are put back into `input`,
 * which is left paused for the transport that takes over.
 * @throws CacheError `CACHE_PROTOCOL_MISMATCH` and the daemon's other refusals, `CACHE_CONNECTION_LOST` when the
 * stream ends first or the daemon does not answer within `timeoutMs`.
 */
function handshake(
  input: Readable,
  output: Writable,
  params: InitializeParams,
  options: { timeoutMs: number; where: string },
): Promise<InitializeResult> {
  return new Promise<InitializeResult>((resolve, reject) => {
    let seen: Buffer = Buffer.alloc(0);
    const finish = (outcome: () => void): void => {
      clearTimeout(timer);
      input.off('data', onData);
      input.off('close', onClose);
      input.pause();
      outcome();
    };
    const timer = setTimeout(
      () =>
        finish(() =>
          reject(
            new CacheError(
              'CACHE_CONNECTION_LOST',
              `The hoard daemon on ${options.where} accepted the connection but did not answer within ${options.timeoutMs} ms.`,
            ),
          ),
        ),
      options.timeoutMs,
    );
    const onClose = (): void => finish(() => reject(lostError()));
    const onData = (chunk: Buffer): void => {
      seen = seen.length === 0 ? chunk : Buffer.concat([seen, chunk]);
      const end = seen.indexOf(HEADER_END);
      if (end < 0 && seen.length < MAX_ANSWER_BYTES) return;
      const length = Number(/content-length:\s*(\d+)/i.exec(seen.toString('latin1', 0, Math.max(end, 0)))?.[1] ?? NaN);
      if (end < 0 || !(length <= MAX_ANSWER_BYTES)) {
        return finish(() => reject(new CacheError('CACHE_PROTOCOL_MISMATCH', `What answers on ${options.where} does not speak hoard's protocol.`)));
      }
      const start = end + HEADER_END.length;
      if (seen.length < start + length) return;
      const rest = seen.subarray(start + length);
      finish(() => {
        if (rest.length > 0) input.unshift(rest);
        settle(seen.toString('utf8', start, start + length));
      });
    };
    const settle = (text: string): void => {
      let answer: { result?: InitializeResult; error?: { message?: unknown; data?: { code?: unknown } } };
      try {
        answer = JSON.parse(text);
      } catch {
        return reject(new CacheError('CACHE_PROTOCOL_MISMATCH', `The answer to initialize on ${options.where} is not JSON.`));
      }
      if (answer.error) {
        const code = answer.error.data?.code;
        return reject(fromWireError(typeof code === 'string' ? code : 'unknown error', String(answer.error.message)));
      }
      if (typeof answer.result?.capabilities !== 'object') {
        return reject(new CacheError('CACHE_PROTOCOL_MISMATCH', `The answer to initialize on ${options.where} has no capabilities.`));
      }
      resolve(answer.result);
    };
    input.on('data', onData);
    input.once('close', onClose);
    output.write(lspFrame({ jsonrpc: '2.0', id: 0, method: Initialize.method, params }));
  });
}

/**
 * Negotiates the transport, the client's one place for it: sends `initialize` over `input` and `output`, asking for
 * the binary transport unless JSON was chosen, and returns the channel of the transport the daemon agreed to. On
 * failure the transport is cut before the error is thrown.
 */
export async function openChannel(
  input: Readable,
  output: Writable,
  transport: Transport,
  options: OpenOptions & { where: string },
): Promise<Channel> {
  const wanted = options.transport ?? 'binary';
  let info;
  try {
    info = await handshake(
      input,
      output,
      {
        clientName: options.clientName,
        pid: process.pid,
        protocolVersion: PROTOCOL_VERSION,
        transports: wanted === 'binary' ? ['binary'] : [],
        ...(options.references ? { references: true } : {}),
        ...(options.chunks ? { chunks: true } : {}),
      },
      { timeoutMs: options.handshakeTimeoutMs ?? 10_000, where: options.where },
    );
  } catch (error) {
    transport.destroy();
    await transport.gone;
    throw error;
  }
  const channel = info.capabilities.transport === 'binary' ? new BinaryChannel(input, output, transport, info) : new JsonChannel(input, output, transport, info);
  if (options.references) enableReferences(channel);
  return channel;
}

/** Connects to the daemon on `socketPath` and negotiates the transport. */
export async function openSocketChannel(socketPath: string, options: OpenOptions): Promise<Channel> {
  const socket = await connectSocket(socketPath);
  return openChannel(socket, socket, { end: () => socket.end(), destroy: () => socket.destroy() }, { ...options, where: socketPath });
}

/** Connects to `socketPath` without a handshake, for `shutdown`, which a daemon of any protocol version answers. */
export async function openWithoutHandshake(socketPath: string): Promise<Channel> {
  const socket = await connectSocket(socketPath);
  return new JsonChannel(socket, socket, { end: () => socket.end(), destroy: () => socket.destroy() });
}
