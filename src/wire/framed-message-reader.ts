import { isUtf8 } from 'node:buffer';
import type { Readable } from 'node:stream';
import { AbstractMessageReader, type DataCallback, type Disposable, type Message, type ResponseMessage } from 'vscode-jsonrpc';
import { FramingError } from './frame-decoder.js';
import { ERROR_NUMBERS } from './wire-error.js';

/** The longest header block accepted; real ones are well under 100 bytes. */
const MAX_HEADER_BYTES = 4096;
const HEADER_END = Buffer.from('\r\n\r\n');

export interface FramedMessageReaderOptions {
  maxMessageBytes: number;
  /** Sends an error response for a message that is framed well but is not a JSON-RPC request or notification. */
  reply: (response: ResponseMessage) => void;
  /**
   * Sees the first message, if it is a valid one, before the connection does. Returning a function takes the
   * stream away from this reader: the message is not delivered, the bytes after it are put back into the stream, and the
   * function is called to serve the stream another way (the binary transport).
   */
  upgrade?: (first: Message) => (() => void) | undefined;
}

/**
 * The daemon's reader of LSP-framed JSON-RPC, in place of vscode-jsonrpc's, which buffers a message of any size,
 * falls out of step for good after a broken header, and drops malformed messages without a word. This one
 * checks each header (a `Content-Length` of digits, at most `maxMessageBytes`) before buffering the body, and
 * fails with a {@link FramingError} when the framing is broken, since the stream cannot be trusted after that.
 * A well-framed body that is not JSON is answered with a parse error (-32700), one that is not valid UTF-8 with
 * an invalid-params error (-32602: no byte is ever replaced), and one that is not a JSON-RPC request or
 * notification (a batch included) with an invalid-request error (-32600); the connection goes on.
 * {@link FramedMessageReader.pause} stops the deliveries at once, also of messages already read.
 */
export class FramedMessageReader extends AbstractMessageReader {
  readonly #readable: Readable;
  readonly #options: FramedMessageReaderOptions;
  #header: Buffer = Buffer.alloc(0);
  #body: Buffer[] = [];
  #bodyLeft = -1;
  #failed = false;
  #first = true;
  #listening: Disposable | undefined;
  #upgraded: (() => void) | undefined;
  #callback: DataCallback | undefined;
  #paused = false;
  /** Bytes read but not yet handled, kept while paused. */
  #held: Buffer | undefined;

  constructor(readable: Readable, options: FramedMessageReaderOptions) {
    super();
    this.#readable = readable;
    this.#options = options;
  }

  listen(callback: DataCallback): Disposable {
    this.#callback = callback;
    const onData = (chunk: Buffer): void => this.#onData(chunk, callback);
    const onClose = (): void => this.fireClose();
    const onError = (error: Error): void => this.fireError(error);
    this.#readable.on('data', onData);
    this.#readable.on('close', onClose);
    this.#readable.on('error', onError);
    this.#listening = {
      dispose: () => {
        this.#readable.off('data', onData);
        this.#readable.off('close', onClose);
        this.#readable.off('error', onError);
      },
    };
    return this.#listening;
  }

  /** Delivers no more messages, not even those of a chunk already read, until {@link FramedMessageReader.resume}. */
  pause(): void {
    if (this.#paused) return;
    this.#paused = true;
    this.#readable.pause();
  }

  /** Delivers the messages held back by {@link FramedMessageReader.pause}, then reads on. */
  resume(): void {
    if (!this.#paused) return;
    this.#paused = false;
    const held = this.#held;
    this.#held = undefined;
    if (held && this.#callback) this.#onData(held, this.#callback);
    if (!this.#paused && !this.#upgraded && !this.#failed) this.#readable.resume();
  }

  #fail(error: FramingError): void {
    this.#failed = true;
    this.fireError(error);
  }

  #onData(chunk: Buffer, callback: DataCallback): void {
    if (this.#paused) {
      // A chunk the stream had on its way when it was paused.
      this.#held = this.#held ? Buffer.concat([this.#held, chunk]) : chunk;
      return;
    }
    let data = chunk;
    while (data.length > 0 && !this.#failed && !this.#upgraded && !this.#paused) {
      if (this.#bodyLeft >= 0) {
        const take = Math.min(this.#bodyLeft, data.length);
        this.#body.push(data.subarray(0, take));
        this.#bodyLeft -= take;
        data = data.subarray(take);
        if (this.#bodyLeft === 0) {
          const body = this.#body.length === 1 ? this.#body[0]! : Buffer.concat(this.#body);
          this.#body = [];
          this.#bodyLeft = -1;
          this.#deliver(body, callback);
        }
        continue;
      }
      const buffered = this.#header.length > 0 ? Buffer.concat([this.#header, data]) : data;
      const end = buffered.indexOf(HEADER_END);
      if (end < 0 || end > MAX_HEADER_BYTES) {
        if (end > MAX_HEADER_BYTES || buffered.length > MAX_HEADER_BYTES) {
          return this.#fail(new FramingError(`a header longer than ${MAX_HEADER_BYTES} bytes`));
        }
        this.#header = Buffer.from(buffered);
        return;
      }
      this.#header = Buffer.alloc(0);
      const length = this.#contentLength(buffered.toString('latin1', 0, end));
      if (length === undefined) return;
      this.#bodyLeft = length;
      data = buffered.subarray(end + HEADER_END.length);
      if (length === 0) {
        this.#bodyLeft = -1;
        this.#deliver(Buffer.alloc(0), callback);
      }
    }
    if (this.#paused && data.length > 0 && !this.#failed) this.#held = data;
    const upgraded = this.#upgraded;
    if (upgraded) {
      this.#listening?.dispose();
      this.#readable.pause();
      if (data.length > 0) this.#readable.unshift(data);
      upgraded();
    }
  }

  #contentLength(header: string): number | undefined {
    let length: number | undefined;
    for (const line of header.split('\r\n')) {
      const colon = line.indexOf(':');
      if (colon <= 0) {
        this.#fail(new FramingError(`a header line that is not "Name: value": ${JSON.stringify(line.slice(0, 80))}`));
        return undefined;
      }
      if (line.slice(0, colon).trim().toLowerCase() !== 'content-length') continue;
      const value = line.slice(colon + 1).trim();
      if (!/^\d{1,15}$/.test(value)) {
        this.#fail(new FramingError(`a Content-Length that is not a length: ${JSON.stringify(value.slice(0, 40))}`));
        return undefined;
      }
      length = Number(value);
    }
    if (length === undefined) {
      this.#fail(new FramingError('a message without Content-Length'));
    } else if (length > this.#options.maxMessageBytes) {
      this.#fail(new FramingError(`a message of ${length} bytes, over the limit of ${this.#options.maxMessageBytes}`));
      return undefined;
    }
    return length;
  }

  #deliver(body: Buffer, callback: DataCallback): void {
    if (!isUtf8(body)) return this.#refuseInvalidUtf8(body);
    let message: unknown;
    try {
      message = JSON.parse(body.toString('utf8'));
    } catch {
      return this.#refuse(null, ERROR_NUMBERS.CACHE_PARSE_ERROR, 'CACHE_PARSE_ERROR', 'The message is not valid JSON.');
    }
    const why = invalidRequest(message);
    if (why) {
      const id = (message as { id?: unknown } | null)?.id;
      return this.#refuse(typeof id === 'number' || typeof id === 'string' ? id : null, ERROR_NUMBERS.CACHE_INVALID_REQUEST, 'CACHE_INVALID_REQUEST', why);
    }
    if (this.#first) {
      this.#first = false;
      this.#upgraded = this.#options.upgrade?.(message as Message);
      if (this.#upgraded) return;
    }
    try {
      callback(message as Message);
    } catch (error) {
      // A dispatcher that throws must not take the daemon down.
      this.#refuse(null, ERROR_NUMBERS.CACHE_INVALID_REQUEST, 'CACHE_INVALID_REQUEST', `The message was refused: ${String(error)}`);
    }
  }

  /** Refuses a body that is not valid UTF-8, with its id if a lenient reading finds a usable one. */
  #refuseInvalidUtf8(body: Buffer): void {
    let id: unknown = null;
    try {
      id = (JSON.parse(body.toString('utf8')) as { id?: unknown } | null)?.id;
    } catch {
      // No id to answer with.
    }
    // A string id may itself hold a replaced byte: it would name a request the client never sent.
    const usable = typeof id === 'number' || (typeof id === 'string' && !id.includes('\uFFFD')) ? id : null;
    this.#refuse(usable, ERROR_NUMBERS.CACHE_INVALID_PARAMS, 'CACHE_INVALID_PARAMS', 'The message is not valid UTF-8: it was not carried out.');
  }

  #refuse(id: number | string | null, code: number, name: string, message: string): void {
    // An answer is on its way in JSON: from now on the connection cannot switch to another framing.
    this.#first = false;
    this.#options.reply({ jsonrpc: '2.0', id, error: { code, message, data: { code: name } } });
  }
}

/** Why a parsed message is not a JSON-RPC 2.0 request or notification, or `undefined` when it is one. */
function invalidRequest(message: unknown): string | undefined {
  if (Array.isArray(message)) return 'Batches are not supported: send one request per message.';
  if (typeof message !== 'object' || message === null) return 'A message must be a JSON object.';
  const { jsonrpc, method, id, params } = message as Record<string, unknown>;
  if (jsonrpc !== '2.0') return 'A message must have "jsonrpc": "2.0".';
  if (typeof method !== 'string') return 'A request must name its method as a string.';
  if (id !== undefined && typeof id !== 'number' && typeof id !== 'string') return 'A request id must be a number or a string.';
  if (params !== undefined && (typeof params !== 'object' || params === null)) return 'params must be an object or an array.';
  if (method === '$/cancelRequest') {
    const cancelled = (params as { id?: unknown } | undefined)?.id;
    if (typeof cancelled !== 'number' && typeof cancelled !== 'string') return '$/cancelRequest needs params.id, a number or a string.';
  }
  return undefined;
}
