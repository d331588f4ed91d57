import type { Readable, Writable } from 'node:stream';
import { type FrameCursor, FrameDecoder } from '../src/wire/frame-decoder.js';
import { FrameWriter } from '../src/wire/frame-writer.js';
import { type AnyRequest, FRAME_HEADER_BYTES, FrameOp, type InitializeResult, type NotificationMethod } from '../src/wire/protocol.js';
import { fromWireError } from '../src/wire/wire-error.js';
import type { EncodedValue } from '../src/store.js';
import { Channel, namesOf, type Transport } from './channel.js';
import { readChunks } from './connect-socket.js';

/** A string's length field and bytes: UTF-8, or UTF-16 for a string UTF-8 cannot carry (see FrameEncoder.string). */
function stringBytes(text: string): number {
  return 4 + (text.isWellFormed() ? Buffer.byteLength(text) : 2 * text.length);
}

/** Answers are read with their own size check only: the daemon is trusted, but a frame must still fit in memory. */
const MAX_ANSWER_BYTES = 2 ** 31;

/**
 * How requests are grouped into writes (see {@link FrameWriter}): a get's release and the next get are two frames,
 * so groups of 32 frames let a caller with 16 or more calls in flight send what one turn made in one write.
 */
const REQUESTS_FLUSH_AFTER_FRAMES = 32;

/**
 * A connection to the daemon in the binary transport (see PROTOCOL.md): requests made in one turn go out in
 * few writes, and every answer of a chunk is handled at once.
 */
export class BinaryChannel extends Channel {
  readonly #writer: FrameWriter;
  readonly #decoder = new FrameDecoder({ maxFrameBytes: MAX_ANSWER_BYTES });

  constructor(input: Readable, output: Writable, transport: Transport, info: InitializeResult) {
    super(transport, info);
    this.#writer = new FrameWriter(output, { flushAfterFrames: REQUESTS_FLUSH_AFTER_FRAMES });
    input.once('close', () => this.closed());
    readChunks(input, (chunk, borrowed) => {
      try {
        this.#decoder.push(chunk, (frame) => this.#answer(frame), borrowed);
      } catch {
        // The daemon's stream is out of step: nothing more on it can be trusted.
        transport.destroy();
      }
    });
  }

  #answer(frame: FrameCursor): void {
    if (frame.op === FrameOp.Error) {
      let error;
      try {
        const code = frame.string();
        error = fromWireError(code, frame.string());
      } catch {
        this.transport.destroy();
        return;
      }
      this.failed(frame.requestId, () => error);
    } else {
      this.answered(frame.requestId, (method) => method.result.readBinary(frame));
    }
  }

  protected send(id: number, method: AnyRequest, params: unknown): void {
    method.params.writeBinary(this.#writer.encoder.begin(method.op, id), params);
    this.#writer.sent();
  }

  protected sendNotification(method: NotificationMethod<unknown>, params: unknown): void {
    method.params.writeBinary(this.#writer.encoder.begin(method.op, 0), params);
    this.#writer.sent();
  }

  protected sendCancel(id: number): void {
    this.#writer.encoder.begin(FrameOp.Cancel, id);
    this.#writer.sent();
  }

  /**
   * The length field of the frame that carries `value` (its bytes after the field): the header, a scope's count,
   * each name, a u64 handle or f64 `modified`, f64 `ttlMs` and `staleMs`, the encoding and the value.
   */
  protected messageBytes(value: EncodedValue, params: unknown): number {
    let bytes = FRAME_HEADER_BYTES - 4 + 4 + 8 + 16 + stringBytes(value.encoding) + 4 + value.bytes.byteLength;
    for (const name of namesOf(params)) bytes += stringBytes(name);
    return bytes;
  }

  protected override flush(): void {
    this.#writer.flush();
  }
}
