import { Transform, type TransformCallback } from 'node:stream';

/** The longest header block accepted; real ones are well under 100 bytes. */
const MAX_HEADER_BYTES = 4096;
const HEADER_END = Buffer.from('\r\n\r\n');

/** Why a connection's byte stream cannot be read as LSP-framed messages. */
export class FramingError extends Error {
  override name = 'FramingError';
}

/**
 * Checks LSP framing on its way into vscode-jsonrpc's reader: a header block must name a `Content-Length` of
 * digits no larger than `maxMessageBytes`. A stream that breaks the rules fails with a {@link FramingError}
 * before the body is buffered, since the reader would otherwise buffer any length, or fall out of step for good.
 * Bodies pass through unchanged and uncopied.
 */
export class FrameGuard extends Transform {
  readonly #maxMessageBytes: number;
  #header: Buffer = Buffer.alloc(0);
  #bodyLeft = 0;

  constructor(options: { maxMessageBytes: number }) {
    super();
    this.#maxMessageBytes = options.maxMessageBytes;
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, done: TransformCallback): void {
    let data = chunk;
    while (data.length > 0) {
      if (this.#bodyLeft > 0) {
        const take = Math.min(this.#bodyLeft, data.length);
        this.push(data.subarray(0, take));
        this.#bodyLeft -= take;
        data = data.subarray(take);
        continue;
      }
      const buffered = this.#header.length > 0 ? Buffer.concat([this.#header, data]) : data;
      const end = buffered.indexOf(HEADER_END);
      if (end < 0) {
        if (buffered.length > MAX_HEADER_BYTES) return done(new FramingError(`a header longer than ${MAX_HEADER_BYTES} bytes`));
        this.#header = Buffer.from(buffered);
        return done();
      }
      if (end > MAX_HEADER_BYTES) return done(new FramingError(`a header longer than ${MAX_HEADER_BYTES} bytes`));
      let length: number;
      try {
        length = this.#contentLength(buffered.toString('latin1', 0, end));
      } catch (error) {
        return done(error as Error);
      }
      this.push(buffered.subarray(0, end + HEADER_END.length));
      this.#header = Buffer.alloc(0);
      this.#bodyLeft = length;
      data = buffered.subarray(end + HEADER_END.length);
    }
    done();
  }

  #contentLength(header: string): number {
    let length: number | undefined;
    for (const line of header.split('\r\n')) {
      const colon = line.indexOf(':');
      if (colon <= 0) throw new FramingError(`a header line that is not "Name: value": ${JSON.stringify(line.slice(0, 80))}`);
      if (line.slice(0, colon).trim().toLowerCase() !== 'content-length') continue;
      const value = line.slice(colon + 1).trim();
      if (!/^\d{1,15}$/.test(value)) throw new FramingError(`a Content-Length that is not a length: ${JSON.stringify(value.slice(0, 40))}`);
      length = Number(value);
    }
    if (length === undefined) throw new FramingError('a message without Content-Length');
    if (length > this.#maxMessageBytes) {
      throw new FramingError(`a message of ${length} bytes, over the limit of ${this.#maxMessageBytes}`);
    }
    return length;
  }
}
