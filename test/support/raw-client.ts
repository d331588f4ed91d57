import { once } from 'node:events';
import { connect as netConnect, type Socket } from 'node:net';
import { onTestFinished } from 'vitest';

/** A hand-driven client: it writes raw bytes and reads LSP-framed JSON messages, so tests can break the rules. */
export class RawClient {
  readonly socket: Socket;
  #buffer = Buffer.alloc(0);
  #chunks: Buffer[] = [];
  #chunkBytes = 0;
  /** The bytes the message at the head of the buffer needs, once its header has arrived. */
  #need = 0;
  #waiting: { resolve: (message: Record<string, unknown>) => void }[] = [];
  #messages: Record<string, unknown>[] = [];
  readonly closed: Promise<void>;
  #nextId = 1;

  private constructor(socket: Socket) {
    this.socket = socket;
    this.closed = new Promise((resolve) => socket.once('close', () => resolve()));
    socket.on('error', () => {});
    socket.on('data', (chunk: Buffer) => {
      // Chunks are joined only once the message at the head is complete, so that a large answer is copied once.
      this.#chunks.push(chunk);
      this.#chunkBytes += chunk.length;
      if (this.#buffer.length + this.#chunkBytes < this.#need) return;
      this.#buffer = Buffer.concat([this.#buffer, ...this.#chunks]);
      this.#chunks = [];
      this.#chunkBytes = 0;
      for (;;) {
        const headerEnd = this.#buffer.indexOf('\r\n\r\n');
        if (headerEnd < 0) return;
        const length = Number(/Content-Length: (\d+)/i.exec(this.#buffer.subarray(0, headerEnd).toString())?.[1]);
        this.#need = headerEnd + 4 + length;
        if (this.#buffer.length < this.#need) return;
        const body = this.#buffer.subarray(headerEnd + 4, this.#need).toString();
        this.#buffer = this.#buffer.subarray(this.#need);
        this.#need = 0;
        const message = JSON.parse(body) as Record<string, unknown>;
        const waiter = this.#waiting.shift();
        if (waiter) waiter.resolve(message);
        else this.#messages.push(message);
      }
    });
  }

  static async open(socketPath: string): Promise<RawClient> {
    const socket = netConnect(socketPath);
    await once(socket, 'connect');
    const client = new RawClient(socket);
    onTestFinished(() => void socket.destroy());
    return client;
  }

  writeRaw(bytes: string | Buffer): void {
    this.socket.write(bytes);
  }

  /** Sends one framed message. */
  send(message: unknown): void {
    const body = Buffer.from(JSON.stringify(message));
    this.socket.write(Buffer.concat([Buffer.from(`Content-Length: ${body.length}\r\n\r\n`), body]));
  }

  /** Sends a request and resolves to the next message that arrives (the tests send one at a time). */
  async request(method: string, params?: unknown): Promise<Record<string, unknown>> {
    const id = this.#nextId++;
    this.send(params === undefined ? { jsonrpc: '2.0', id, method } : { jsonrpc: '2.0', id, method, params });
    return this.next();
  }

  next(): Promise<Record<string, unknown>> {
    const queued = this.#messages.shift();
    if (queued) return Promise.resolve(queued);
    return new Promise((resolve) => this.#waiting.push({ resolve }));
  }

  async initialize(protocolVersion = 2): Promise<Record<string, unknown>> {
    return this.request('initialize', { clientName: 'raw test client', pid: process.pid, protocolVersion });
  }
}
