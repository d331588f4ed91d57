import { once } from 'node:events';
import { connect as netConnect, type Socket } from 'node:net';
import { onTestFinished } from 'vitest';

/** One field of a hand-built frame, written as PROTOCOL.md describes it (independently of src/frame-encoder.ts). */
export type Field =
  | ['u8', number]
  | ['u32', number]
  | ['u64', number]
  | ['f64', number]
  | ['string', string]
  | ['strings', string[]]
  | ['bytes', Uint8Array];

function encodeField([type, value]: Field): Buffer {
  switch (type) {
    case 'u8':
      return Buffer.from([value]);
    case 'u32': {
      const out = Buffer.alloc(4);
      out.writeUInt32LE(value);
      return out;
    }
    case 'u64': {
      const out = Buffer.alloc(8);
      out.writeBigUInt64LE(BigInt(value));
      return out;
    }
    case 'f64': {
      const out = Buffer.alloc(8);
      out.writeDoubleLE(value);
      return out;
    }
    case 'string': {
      const body = Buffer.from(value, 'utf8');
      return Buffer.concat([encodeField(['u32', body.length]), body]);
    }
    case 'strings':
      return Buffer.concat([encodeField(['u32', value.length]), ...value.map((name) => encodeField(['string', name]))]);
    case 'bytes':
      return Buffer.concat([encodeField(['u32', value.byteLength]), Buffer.from(value)]);
  }
}

/** A whole frame: length, op, request id, fields. */
export function frame(op: number, requestId: number, fields: Field[] = []): Buffer {
  const body = Buffer.concat(fields.map(encodeField));
  const header = Buffer.alloc(9);
  header.writeUInt32LE(body.length + 5, 0);
  header[4] = op;
  header.writeUInt32LE(requestId, 5);
  return Buffer.concat([header, body]);
}

/** An answer as read off the wire, with a cursor over its fields. */
export class Answer {
  #at = 9;
  constructor(readonly raw: Buffer) {}

  get op(): number {
    return this.raw[4]!;
  }

  get requestId(): number {
    return this.raw.readUInt32LE(5);
  }

  u8(): number {
    return this.raw[this.#at++]!;
  }

  u64(): number {
    const value = Number(this.raw.readBigUInt64LE(this.#at));
    this.#at += 8;
    return value;
  }

  f64(): number {
    const value = this.raw.readDoubleLE(this.#at);
    this.#at += 8;
    return value;
  }

  bytes(): Buffer {
    const length = this.raw.readUInt32LE(this.#at);
    const value = this.raw.subarray(this.#at + 4, this.#at + 4 + length);
    this.#at += 4 + length;
    return value;
  }

  string(): string {
    return this.bytes().toString('utf8');
  }

  /** The `code` of an error answer (op 0x81). */
  get errorCode(): string | undefined {
    return this.op === 0x81 ? new Answer(this.raw).string() : undefined;
  }

  get remaining(): number {
    return this.raw.length - this.#at;
  }
}

/**
 * A hand-driven client of the binary transport: it performs the JSON handshake itself, then writes raw frames
 * and reads answers, so tests can check the wire format and break its rules.
 */
export class RawBinaryClient {
  readonly socket: Socket;
  readonly closed: Promise<void>;
  #buffer = Buffer.alloc(0);
  #handshake: ((answer: Record<string, unknown>) => void) | undefined;
  #answers: Answer[] = [];
  #waiting: ((answer: Answer) => void)[] = [];

  private constructor(socket: Socket) {
    this.socket = socket;
    this.closed = new Promise((resolve) => socket.once('close', () => resolve()));
    socket.on('error', () => {});
    socket.on('data', (chunk: Buffer) => {
      this.#buffer = Buffer.concat([this.#buffer, chunk]);
      if (this.#handshake) {
        const end = this.#buffer.indexOf('\r\n\r\n');
        if (end < 0) return;
        const length = Number(/Content-Length: (\d+)/i.exec(this.#buffer.subarray(0, end).toString())?.[1]);
        if (this.#buffer.length < end + 4 + length) return;
        const answer = JSON.parse(this.#buffer.subarray(end + 4, end + 4 + length).toString()) as Record<string, unknown>;
        this.#buffer = this.#buffer.subarray(end + 4 + length);
        const resolve = this.#handshake;
        this.#handshake = undefined;
        resolve(answer);
      }
      while (this.#buffer.length >= 4 && this.#buffer.length >= this.#buffer.readUInt32LE(0) + 4) {
        const size = this.#buffer.readUInt32LE(0) + 4;
        const answer = new Answer(Buffer.from(this.#buffer.subarray(0, size)));
        this.#buffer = this.#buffer.subarray(size);
        const waiter = this.#waiting.shift();
        if (waiter) waiter(answer);
        else this.#answers.push(answer);
      }
    });
  }

  /** Connects and sends `initialize` offering `transports`; resolves once the JSON answer has arrived. */
  static async open(
    socketPath: string,
    options: { transports?: string[]; protocolVersion?: number; clientName?: string; after?: Buffer; references?: boolean } = {},
  ): Promise<{ client: RawBinaryClient; answer: Record<string, unknown> }> {
    const socket = netConnect(socketPath);
    await once(socket, 'connect');
    onTestFinished(() => void socket.destroy());
    const client = new RawBinaryClient(socket);
    const params = { clientName: options.clientName ?? 'raw binary client', pid: process.pid, protocolVersion: options.protocolVersion ?? 2, transports: options.transports ?? ['binary'], ...(options.references ? { references: true } : {}) };
    const body = Buffer.from(JSON.stringify({ jsonrpc: '2.0', id: 0, method: 'initialize', params }));
    const answered = new Promise<Record<string, unknown>>((resolve) => (client.#handshake = resolve));
    // `after` goes in the same write as the handshake: frames sent without waiting for the answer.
    socket.write(Buffer.concat([Buffer.from(`Content-Length: ${body.length}\r\n\r\n`), body, options.after ?? Buffer.alloc(0)]));
    return { client, answer: await answered };
  }

  write(bytes: Buffer): void {
    this.socket.write(bytes);
  }

  next(): Promise<Answer> {
    const queued = this.#answers.shift();
    if (queued) return Promise.resolve(queued);
    return new Promise((resolve) => this.#waiting.push(resolve));
  }

  /** Sends one frame and resolves to the next answer. */
  async call(op: number, requestId: number, fields: Field[] = []): Promise<Answer> {
    this.write(frame(op, requestId, fields));
    return this.next();
  }
}
