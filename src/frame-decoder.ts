import { UTF16_FLAG } from './frame-encoder.js';
import { FRAME_HEADER_BYTES } from './protocol.js';

/** Why a byte stream cannot be read as frames any more: the stream is out of step and must be closed. */
export class FramingError extends Error {
  override name = 'FramingError';
}

/** A frame whose fields do not match its op: the frame is refused, and the stream goes on. */
export class MalformedFrame extends Error {
  override name = 'MalformedFrame';
}

/** Reads the fields of one frame in order; every read checks that the frame holds them. */
export class FrameCursor {
  readonly #frame: Buffer;
  #at: number;

  constructor(frame: Buffer) {
    this.#frame = frame;
    this.#at = FRAME_HEADER_BYTES;
  }

  get op(): number {
    return this.#frame[4]!;
  }

  get requestId(): number {
    return this.#frame.readUInt32LE(5);
  }

  #take(bytes: number): number {
    const at = this.#at;
    if (at + bytes > this.#frame.length) throw new MalformedFrame(`the frame ends before its fields do (op 0x${this.op.toString(16)})`);
    this.#at = at + bytes;
    return at;
  }

  u8(): number {
    return this.#frame[this.#take(1)]!;
  }

  u32(): number {
    return this.#frame.readUInt32LE(this.#take(4));
  }

  u64(): number {
    const at = this.#take(8);
    const high = this.#frame.readUInt32LE(at + 4);
    if (high >= 0x20_0000) throw new MalformedFrame('a u64 field is over 2^53');
    return high * 0x1_0000_0000 + this.#frame.readUInt32LE(at);
  }

  f64(): number {
    return this.#frame.readDoubleLE(this.#take(8));
  }

  string(): string {
    const header = this.u32();
    const utf16 = header >= UTF16_FLAG;
    const length = utf16 ? header - UTF16_FLAG : header;
    if (utf16 && length % 2 !== 0) throw new MalformedFrame('a UTF-16 string has an odd byte length');
    const at = this.#take(length);
    return this.#frame.toString(utf16 ? 'utf16le' : 'utf8', at, at + length);
  }

  strings(): string[] {
    const count = this.u32();
    // Each string takes at least its four-byte length: a count beyond that cannot be honest.
    if (count * 4 > this.#frame.length - this.#at) throw new MalformedFrame('a string count larger than the frame');
    const values = new Array<string>(count);
    for (let n = 0; n < count; n++) values[n] = this.string();
    return values;
  }

  /** A view of the frame's bytes: copy it to keep it beyond the frame. */
  bytes(): Buffer {
    const length = this.u32();
    const at = this.#take(length);
    return this.#frame.subarray(at, at + length);
  }

  /** The bytes not read yet. */
  rest(): Buffer {
    const at = this.#at;
    this.#at = this.#frame.length;
    return this.#frame.subarray(at);
  }

  /** Refuses fields beyond the ones read. */
  done(): void {
    if (this.#at !== this.#frame.length) throw new MalformedFrame(`the frame has ${this.#frame.length - this.#at} bytes beyond its fields`);
  }
}

/**
 * Cuts a byte stream into binary-transport frames. A frame's length is checked against `maxFrameBytes` before
 * any of it is buffered; a frame too long or too short to hold its header is a {@link FramingError}.
 */
export class FrameDecoder {
  readonly #maxFrameBytes: number;
  #pending: Buffer[] = [];
  #pendingBytes = 0;
  /** The whole size of the frame being gathered, once its length field has arrived. */
  #need = -1;

  constructor(options: { maxFrameBytes: number }) {
    this.#maxFrameBytes = options.maxFrameBytes;
  }

  /** The whole size of the frame at `at`: its length field counts the bytes after the field. */
  #sizeOf(data: Buffer, at: number): number {
    const length = data.readUInt32LE(at);
    if (length < FRAME_HEADER_BYTES - 4) throw new FramingError(`a frame length of ${length}, too short for its header`);
    if (length > this.#maxFrameBytes) throw new FramingError(`a frame length of ${length}, over the limit of ${this.#maxFrameBytes}`);
    return length + 4;
  }

  /**
   * Feeds a chunk (empty to go on after a stop), calling `onFrame` with each complete frame, a view into the
   * chunk. When `onFrame` returns `false`, the frames after that one stay buffered until the next push.
   */
  push(chunk: Buffer, onFrame: (frame: FrameCursor) => boolean | void): void {
    let data = chunk;
    if (this.#pendingBytes > 0) {
      if (chunk.length > 0) this.#pending.push(chunk);
      this.#pendingBytes += chunk.length;
      if (this.#need < 0) {
        if (this.#pendingBytes < 4) return;
        const joined = Buffer.concat(this.#pending);
        this.#pending = [joined];
        this.#need = this.#sizeOf(joined, 0);
      }
      if (this.#pendingBytes < this.#need) return;
      data = Buffer.concat(this.#pending, this.#pendingBytes);
      this.#pending = [];
      this.#pendingBytes = 0;
      this.#need = -1;
    }
    let at = 0;
    while (data.length - at >= 4) {
      const size = this.#sizeOf(data, at);
      if (data.length - at < size) break;
      const goOn = onFrame(new FrameCursor(data.subarray(at, at + size)));
      at += size;
      if (goOn === false) break;
    }
    if (at < data.length) {
      const rest = data.subarray(at);
      this.#pending = [rest];
      this.#pendingBytes = rest.length;
      this.#need = rest.length >= 4 ? this.#sizeOf(rest, 0) : -1;
    }
  }
}
