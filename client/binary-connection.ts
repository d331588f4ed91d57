import type { Readable, Writable } from 'node:stream';
import { type FrameCursor, FrameDecoder } from '../src/frame-decoder.js';
import type { FrameEncoder } from '../src/frame-encoder.js';
import { FrameWriter } from '../src/frame-writer.js';
import type { EncodedValue } from '../src/store.js';
import { BinaryOp, FRAME_HEADER_BYTES, type InitializeResult, type StatusResult } from '../src/protocol.js';
import {
  type CallOptions,
  type ChannelItem,
  checkMessageSize,
  closedError,
  type DaemonChannel,
  endTransport,
  fromWireError,
  type GetAnswer,
  type GetSetAnswer,
  lostError,
  readChunks,
  type Transport,
} from './daemon-channel.js';

/** Answers are read with their own size check only: the daemon is trusted, but a frame must still fit in memory. */
const MAX_ANSWER_BYTES = 2 ** 31;

interface Pending {
  parse(frame: FrameCursor): unknown;
  resolve(result: unknown): void;
  reject(error: unknown): void;
  /** Set when the caller gave up waiting: a late result goes here. */
  abandoned?: ((result: never) => void) | undefined;
}

function readItem(frame: FrameCursor): ChannelItem | null {
  if (frame.u8() === 0) return null;
  const modified = frame.f64();
  const encoding = frame.string();
  return { modified, encoding, bytes: frame.keptBytes() };
}

function readGet(frame: FrameCursor): GetAnswer {
  const handle = frame.u64();
  return { handle, item: readItem(frame) };
}

function readGetSet(frame: FrameCursor): GetSetAnswer {
  if (frame.u8() === 0) return { handle: null, item: null };
  const handle = frame.u64();
  return { handle, item: readItem(frame) };
}

const nothing = (): undefined => undefined;

/** Bytes a string may take in a frame: its length field and at most three bytes per UTF-16 unit. */
function stringBytes(value: string): number {
  return 4 + value.length * 3;
}

/**
 * A connection to the daemon in the binary transport (see PROTOCOL.md): requests made in one turn go out in
 * one write, and every answer of a chunk is handled at once.
 */
export class BinaryConnection implements DaemonChannel {
  readonly info: InitializeResult;
  readonly lostPromise: Promise<void>;
  readonly #transport: Transport;
  readonly #writer: FrameWriter;
  readonly #encoder: FrameEncoder;
  readonly #decoder = new FrameDecoder({ maxFrameBytes: MAX_ANSWER_BYTES });
  readonly #pending = new Map<number, Pending>();
  #nextId = 0;
  #lost = false;
  #closedByUs = false;

  constructor(input: Readable, output: Writable, transport: Transport, info: InitializeResult) {
    this.info = info;
    this.#transport = transport;
    this.#writer = new FrameWriter(output);
    this.#encoder = this.#writer.encoder;
    this.lostPromise = new Promise((resolve) => {
      input.once('close', () => {
        this.#lost = true;
        const error = this.#closedByUs ? closedError() : lostError();
        for (const pending of this.#pending.values()) pending.reject(error);
        this.#pending.clear();
        transport.destroy();
        resolve();
      });
    });
    readChunks(input, (chunk, borrowed) => {
      try {
        this.#decoder.push(chunk, (frame) => this.#answer(frame), borrowed);
      } catch {
        // The daemon's stream is out of step: nothing more on it can be trusted.
        transport.destroy();
      }
    });
  }

  get lost(): boolean {
    return this.#lost;
  }

  #answer(frame: FrameCursor): void {
    const pending = this.#pending.get(frame.requestId);
    if (!pending) return;
    this.#pending.delete(frame.requestId);
    let result: unknown;
    try {
      if (frame.op === BinaryOp.Error) {
        const code = frame.string();
        pending.reject(fromWireError(code, frame.string()));
        return;
      }
      result = pending.parse(frame);
    } catch {
      // An answer that does not parse: the stream cannot be trusted, and this call fails with the others.
      this.#pending.set(frame.requestId, pending);
      this.#transport.destroy();
      return;
    }
    if (pending.abandoned) pending.abandoned(result as never);
    else pending.resolve(result);
  }

  /** Sends one request: `write` adds its fields after the header, `parse` reads the answer's. */
  #call<R>(op: number, write: (encoder: FrameEncoder) => void, parse: (frame: FrameCursor) => R, options: CallOptions<R> = {}): Promise<R> {
    const { signal } = options;
    if (signal?.aborted) return Promise.reject(signal.reason);
    if (this.#lost) return Promise.reject(this.#closedByUs ? closedError() : lostError());
    const requestId = (this.#nextId = (this.#nextId + 1) >>> 0);
    write(this.#encoder.begin(op, requestId));
    this.#writer.sent();
    return new Promise<R>((resolve, reject) => {
      const pending: Pending = { parse, resolve: resolve as (result: unknown) => void, reject };
      this.#pending.set(requestId, pending);
      if (!signal) return;
      const onAbort = (): void => {
        pending.abandoned = options.abandoned ?? nothing;
        pending.reject = nothing;
        if (!this.#lost) {
          this.#encoder.begin(BinaryOp.Cancel, requestId);
          this.#writer.sent();
        }
        reject(signal.reason);
      };
      signal.addEventListener('abort', onAbort, { once: true });
      pending.resolve = (result) => {
        signal.removeEventListener('abort', onAbort);
        resolve(result as R);
      };
      pending.reject = (error) => {
        signal.removeEventListener('abort', onAbort);
        reject(error);
      };
    });
  }

  #checkSize(value: EncodedValue, names: readonly string[]): void {
    const bytes = FRAME_HEADER_BYTES + 64 + value.bytes.byteLength + names.reduce((total, name) => total + stringBytes(name), 0);
    checkMessageSize(this.info, bytes, `${value.bytes.byteLength} bytes`);
  }

  get(scope: readonly string[], id: string, options?: CallOptions<GetAnswer>): Promise<GetAnswer> {
    return this.#call(BinaryOp.Get, (encoder) => encoder.strings(scope).string(id), readGet, options);
  }

  getset(scope: readonly string[], id: string, wait: boolean, options?: CallOptions<GetSetAnswer>): Promise<GetSetAnswer> {
    return this.#call(BinaryOp.GetSet, (encoder) => encoder.strings(scope).string(id).u8(wait ? 1 : 0), readGetSet, options);
  }

  async handleSet(handle: number, value: EncodedValue): Promise<void> {
    this.#checkSize(value, []);
    await this.#call(BinaryOp.HandleSet, (encoder) => encoder.u64(handle).string(value.encoding).bytes(value.bytes), nothing);
  }

  release(handle: number): void {
    if (this.#lost) return;
    this.#encoder.begin(BinaryOp.Release, 0).u64(handle);
    this.#writer.sent();
  }

  async set(scope: readonly string[], id: string, value: EncodedValue, modified?: number): Promise<void> {
    this.#checkSize(value, [...scope, id]);
    const when = modified ?? Date.now() / 1000;
    await this.#call(
      BinaryOp.Set,
      (encoder) => encoder.strings(scope).string(id).f64(when).string(value.encoding).bytes(value.bytes),
      nothing,
    );
  }

  async delete(scope: readonly string[], id: string): Promise<void> {
    await this.#call(BinaryOp.Delete, (encoder) => encoder.strings(scope).string(id), nothing);
  }

  async clear(scope: readonly string[]): Promise<void> {
    await this.#call(BinaryOp.Clear, (encoder) => encoder.strings(scope), nothing);
  }

  status(): Promise<StatusResult> {
    return this.#call(BinaryOp.Status, () => {}, (frame) => JSON.parse(frame.string()) as StatusResult);
  }

  async close(): Promise<void> {
    if (!this.#lost) {
      this.#closedByUs = true;
      this.#writer.flush();
      await endTransport(this.#transport, this.lostPromise);
    }
    await this.#transport.gone;
  }
}
