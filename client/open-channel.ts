import type { Readable, Writable } from 'node:stream';
import { PROTOCOL_VERSION } from '../src/protocol.js';
import { BinaryConnection } from './binary-connection.js';
import { connectSocket, type DaemonChannel, type Transport } from './daemon-channel.js';
import { DaemonConnection } from './daemon-connection.js';
import { handshake } from './handshake.js';

export type TransportName = 'binary' | 'json';

export interface OpenOptions {
  clientName: string;
  /** The transport to ask for; default `'binary'`, with JSON kept when the daemon does not offer it. */
  transport?: TransportName;
  /** How long the daemon may take to answer the handshake; default 10 s. */
  handshakeTimeoutMs?: number;
}

/**
 * Performs the handshake over `input` and `output` and returns the connection in the transport agreed.
 * On failure the transport is cut before the error is thrown.
 */
export async function openChannel(
  input: Readable,
  output: Writable,
  transport: Transport,
  options: OpenOptions & { where: string },
): Promise<DaemonChannel> {
  const wanted = options.transport ?? 'binary';
  let info;
  try {
    info = await handshake(
      input,
      output,
      { clientName: options.clientName, pid: process.pid, protocolVersion: PROTOCOL_VERSION, transports: wanted === 'binary' ? ['binary'] : [] },
      { timeoutMs: options.handshakeTimeoutMs ?? 10_000, where: options.where },
    );
  } catch (error) {
    transport.destroy();
    await transport.gone;
    throw error;
  }
  if (info.capabilities.transport === 'binary') return new BinaryConnection(input, output, transport, info);
  return DaemonConnection.over(input, output, transport, info);
}

/** Connects to the daemon on `socketPath` and performs the handshake. */
export async function openSocketChannel(socketPath: string, options: OpenOptions): Promise<DaemonChannel> {
  const socket = await connectSocket(socketPath);
  return openChannel(socket, socket, { end: () => socket.end(), destroy: () => socket.destroy() }, { ...options, where: socketPath });
}
