import { isUtf8 } from 'node:buffer';
import { UTF16_FLAG } from './frame-encoder.js';
import { FRAME_HEADER_BYTES } from './protocol.js';

/** Why a byte stream cannot be read as frames (binary or LSP) any more: the stream is out of step and must be closed. */
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
  readonly #borrowed: boolean;
  #at: number;

  /** `borrowed`: the frame's memory is reused once the frame has been handled, so what is kept must be copied. */
  constructor(frame: Buffer, borrowed = false) {
    this.#frame = frame;
    this.#borrowed = borrowed;
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

  /** A string, refused unless its bytes are valid UTF-8 (UTF-16 code units carry any string, lone surrogates included). */
  string(): string {
    const header = this.u32();
    const utf16 = header >= UTF16_FLAG;
    const length = utf16 ? header - UTF16_FLAG : header;
    if (utf16 && length % 2 !== 0) throw new MalformedFrame('a UTF-16 string has an odd byte length');
    const at = this.#take(length);
    if (utf16) return this.#frame.toString('utf16le', at, at + length);
    // Decoding would replace each bad byte with U+FFFD, so that different byte strings would name one item.
    if (!isUtf8(this.#frame.subarray(at, at + length))) throw new MalformedFrame('a string that is not valid UTF-8');
    return this.#frame.toString('utf8', at, at + length);
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

  /** Like {@link bytes}, but safe to keep: a copy when the frame is borrowed. */
  keptBytes(): Buffer {
    const view = this.bytes();
    return this.#borrowed ? Buffer.from(view) : view;
  }

  /** Refuses fields beyond the ones read. */
  done(): void {
    if (this.#at !== this.#frame.length) throw new MalformedFrame(`the frame has ${this.#frame.length - this.#at} bytes beyond its fields`);
  }
}

/**
 * Cuts a byte stream into binary-transport frames. A frame's length is checked against `maxFrameBytes` before
 * any of it is buffered; a frame too long or too short to hold its header is a {@link FramingError}. A frame
 * that arrives whole in one chunk is a view into it; one cut across chunks is copied once, into a buffer of its
 * own size, so that a large value neither costs two copies nor keeps the bytes of the frames around it alive.
 */
export class FrameDecoder {
  readonly #maxFrameBytes: number;
  /** The chunks of a frame cut across chunks, or bytes held back by a stop, in order. */
  #pending: Buffer[] = [];
  #pendingBytes = 0;
  /** The whole size of the frame being gathered in `#pending`, once its length field has arrived. */
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
   * Feeds a chunk (empty to go on after a stop), calling `onFrame` with each complete frame. When `onFrame`
   * returns `false`, the bytes after that frame stay buffered until the next push. A `borrowed` chunk's memory
   * is reused after the call: the decoder copies what it keeps of it, and its frames are borrowed too.
   */
  push(chunk: Buffer, onFrame: (frame: FrameCursor) => boolean | void, borrowed = false): void {
    const own = (piece: Buffer): Buffer => (borrowed ? Buffer.from(piece) : piece);
    let data = chunk;
    let at = 0;
    if (this.#pendingBytes > 0) {
      if (this.#need < 0) {
        // Fewer than four bytes, or what a stop held back: join them with the chunk and start afresh.
        data = this.#pendingBytes + chunk.length >= 4 ? Buffer.concat([...this.#pending, chunk]) : chunk;
        if (data === chunk) {
          if (chunk.length > 0) this.#pending.push(own(chunk));
          this.#pendingBytes += chunk.length;
          return;
        }
        this.#pending = [];
        this.#pendingBytes = 0;
      } else {
        // The rest of a frame cut across chunks: copy exactly its bytes, and read the chunk's others in place.
        const missing = this.#need - this.#pendingBytes;
        if (chunk.length < missing) {
          if (chunk.length > 0) this.#pending.push(own(chunk));
          this.#pendingBytes += chunk.length;
          return;
        }
        this.#pending.push(chunk.subarray(0, missing));
        const frame = Buffer.concat(this.#pending, this.#need);
        this.#pending = [];
        this.#pendingBytes = 0;
        this.#need = -1;
        at = missing;
        if (onFrame(new FrameCursor(frame)) === false) {
          this.#hold(chunk, at, borrowed);
          return;
        }
      }
    }
    const lent = borrowed && data === chunk;
    while (data.length - at >= 4) {
      const size = this.#sizeOf(data, at);
      if (data.length - at < size) break;
      const goOn = onFrame(new FrameCursor(data.subarray(at, at + size), lent));
      at += size;
      if (goOn === false) break;
    }
    this.#hold(data, at, lent);
  }

  /** Keeps the bytes of `data` from `at` on for the next push, copied if `data` is borrowed. */
  #hold(data: Buffer, at: number, borrowed: boolean): void {
    if (at >= data.length) return;
    const rest = borrowed ? Buffer.from(data.subarray(at)) : data.subarray(at);
    this.#pending = [rest];
    this.#pendingBytes = rest.length;
    this.#need = rest.length >= 4 ? this.#sizeOf(rest, 0) : -1;
    // A whole frame held back by a stop is read from the start again on the next push.
    if (this.#need >= 0 && this.#need <= rest.length) this.#need = -1;
  }
}
