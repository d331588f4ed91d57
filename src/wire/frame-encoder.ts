import { FRAME_HEADER_BYTES } from './protocol.js';

declare global {
  interface String {
    /** Node 20 has it; TypeScript's ES2022 library does not declare it. */
    isWellFormed(): boolean;
  }
}

/** Values at least this long travel as their own chunk instead of being copied into the staging buffer. */
const COPY_LIMIT = 8 * 1024;
const STAGING_BYTES = 16 * 1024;
/** The top bit of a string's length marks UTF-16LE, for strings that UTF-8 cannot carry (unpaired surrogates). */
export const UTF16_FLAG = 0x8000_0000;

/**
 * Builds binary-transport frames (see PROTOCOL.md) into few large buffers, so that everything queued in one
 * turn goes out in one write. Small fields are copied into a staging buffer; large values are referenced,
 * not copied, so the caller must not change them until {@link FrameEncoder.take} has handed them on.
 */
export class FrameEncoder {
  #chunks: Buffer[] = [];
  #buffer = Buffer.allocUnsafe(STAGING_BYTES);
  /** Where the staged bytes start and end within `#buffer`. */
  #start = 0;
  #end = 0;
  /** The buffer and offset holding the open frame's length field, and the frame's bytes so far. */
  #frameBuffer: Buffer | undefined;
  #frameOffset = 0;
  #frameBytes = 0;
  /** Bytes queued and not yet taken. */
  #queued = 0;

  get queuedBytes(): number {
    return this.#queued;
  }

  #room(bytes: number): void {
    if (this.#buffer.length - this.#end >= bytes) return;
    this.#stage();
    this.#buffer = Buffer.allocUnsafe(Math.max(STAGING_BYTES, bytes));
    this.#start = this.#end = 0;
  }

  /** Moves the staged bytes into the chunk list. */
  #stage(): void {
    if (this.#end > this.#start) this.#chunks.push(this.#buffer.subarray(this.#start, this.#end));
    this.#start = this.#end;
  }

  #advance(bytes: number): number {
    const at = this.#end;
    this.#end += bytes;
    this.#frameBytes += bytes;
    return at;
  }

  /** Opens a frame; {@link FrameEncoder.end} closes it. */
  begin(op: number, requestId: number): this {
    this.#room(FRAME_HEADER_BYTES);
    this.#frameBuffer = this.#buffer;
    this.#frameOffset = this.#end;
    this.#frameBytes = 0;
    const at = this.#advance(FRAME_HEADER_BYTES);
    this.#buffer[at + 4] = op;
    this.#buffer.writeUInt32LE(requestId >>> 0, at + 5);
    return this;
  }

  u8(value: number): this {
    this.#room(1);
    this.#buffer[this.#advance(1)] = value;
    return this;
  }

  u32(value: number): this {
    this.#room(4);
    this.#buffer.writeUInt32LE(value, this.#advance(4));
    return this;
  }

  /** A non-negative safe integer as a little-endian u64. */
  u64(value: number): this {
    this.#room(8);
    const at = this.#advance(8);
    this.#buffer.writeUInt32LE(value % 0x1_0000_0000, at);
    this.#buffer.writeUInt32LE(Math.floor(value / 0x1_0000_0000), at + 4);
    return this;
  }

  f64(value: number): this {
    this.#room(8);
    this.#buffer.writeDoubleLE(value, this.#advance(8));
    return this;
  }

  /** A u32 byte length, then UTF-8; or, for a string with unpaired surrogates, UTF-16LE with the length's top bit set. */
  string(value: string): this {
    if (!value.isWellFormed()) {
      this.#room(4 + value.length * 2);
      const at = this.#advance(4);
      const written = this.#buffer.write(value, at + 4, 'utf16le');
      this.#buffer.writeUInt32LE((written | UTF16_FLAG) >>> 0, at);
      this.#advance(written);
      return this;
    }
    this.#room(4 + value.length * 3);
    const at = this.#advance(4);
    const written = value.length === 0 ? 0 : this.#buffer.write(value, at + 4, 'utf8');
    this.#buffer.writeUInt32LE(written, at);
    this.#advance(written);
    return this;
  }

  /** A u32 count, then each string. */
  strings(values: readonly string[]): this {
    this.u32(values.length);
    for (const value of values) this.string(value);
    return this;
  }

  /** A u32 length, then the bytes. */
  bytes(value: Uint8Array): this {
    this.u32(value.byteLength);
    if (value.byteLength < COPY_LIMIT) {
      this.#room(value.byteLength);
      this.#buffer.set(value, this.#advance(value.byteLength));
      return this;
    }
    this.#stage();
    this.#chunks.push(Buffer.from(value.buffer, value.byteOffset, value.byteLength));
    this.#frameBytes += value.byteLength;
    return this;
  }

  /** Closes the open frame by filling in its length, and returns its size in bytes. */
  end(): number {
    const size = this.#frameBytes;
    this.#frameBuffer!.writeUInt32LE(size - 4, this.#frameOffset);
    this.#frameBuffer = undefined;
    this.#queued += size;
    return size;
  }

  /** Hands over every closed frame, as few buffers to write in order. */
  take(): Buffer[] {
    this.#stage();
    const chunks = this.#chunks;
    this.#chunks = [];
    this.#queued = 0;
    return chunks;
  }
}
