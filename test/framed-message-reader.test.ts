import { PassThrough } from 'node:stream';
import fc from 'fast-check';
import { describe, expect, test } from 'vitest';
import { FramingError } from '../src/wire/frame-decoder.js';
import { FramedMessageReader } from '../src/wire/framed-message-reader.js';

function frame(message: unknown): Buffer {
  const body = Buffer.from(JSON.stringify(message));
  return Buffer.concat([Buffer.from(`Content-Length: ${body.length}\r\nContent-Type: application/vscode-jsonrpc; charset=utf-8\r\n\r\n`), body]);
}

/** Feeds `bytes` to a reader in chunks cut at `cuts`, and collects what it delivers, replies and reports. */
function feed(bytes: Buffer, cuts: number[], maxMessageBytes = 1 << 20) {
  const input = new PassThrough();
  const delivered: unknown[] = [];
  const replies: unknown[] = [];
  const errors: Error[] = [];
  const reader = new FramedMessageReader(input, { maxMessageBytes, reply: (response) => replies.push(response) });
  reader.onError((error) => errors.push(error));
  reader.listen((message) => delivered.push(message));
  let start = 0;
  for (const cut of [...new Set(cuts.map((c) => c % (bytes.length + 1)))].sort((a, b) => a - b)) {
    input.write(bytes.subarray(start, cut));
    start = cut;
  }
  input.write(bytes.subarray(start));
  return { delivered, replies, errors };
}

const message = fc.record({
  jsonrpc: fc.constant('2.0'),
  method: fc.string({ minLength: 1 }),
  params: fc.dictionary(fc.string(), fc.jsonValue()),
});

describe('FramedMessageReader', () => {
  test('delivers every message exactly once and in order, however the stream is cut into reads', () => {
    fc.assert(
      fc.property(fc.array(message, { minLength: 1, maxLength: 20 }), fc.array(fc.nat(), { maxLength: 40 }), (messages, cuts) => {
        const { delivered, replies, errors } = feed(Buffer.concat(messages.map(frame)), cuts);
        expect(errors).toEqual([]);
        expect(replies).toEqual([]);
        // As JSON has them (JSON has no -0).
        expect(delivered).toEqual(JSON.parse(JSON.stringify(messages)));
      }),
      { numRuns: 300 },
    );
  });

  test('one byte at a time, with a body that arrives in many reads', () => {
    const messages = [
      { jsonrpc: '2.0', method: 'a', params: { text: 'x'.repeat(50_000) } },
      { jsonrpc: '2.0', id: 1, method: 'b' },
    ];
    const bytes = Buffer.concat(messages.map(frame));
    const { delivered } = feed(bytes, Array.from({ length: 2000 }, (_, n) => n));
    expect(delivered).toEqual(messages);
  });

  test('a broken header or an oversized message fails the stream before its body is read', () => {
    const oversized = feed(Buffer.from('Content-Length: 2000\r\n\r\n'), [], 1024);
    expect(oversized.errors[0]).toBeInstanceOf(FramingError);
    expect(oversized.errors[0]!.message).toMatch(/over the limit of 1024/);
    const good = frame({ jsonrpc: '2.0', method: 'after' });
    const broken = feed(Buffer.concat([Buffer.from('Content-Length: x\r\n\r\n'), good]), []);
    expect(broken.errors).toHaveLength(1);
    expect(broken.delivered).toEqual([]);
  });

  test('pause stops deliveries at once, also of messages already read; resume delivers the rest in order', () => {
    const input = new PassThrough();
    const delivered: unknown[] = [];
    const reader = new FramedMessageReader(input, { maxMessageBytes: 1 << 20, reply: () => {} });
    reader.listen((message) => {
      delivered.push(message);
      if (delivered.length === 2) reader.pause();
    });
    const messages = Array.from({ length: 6 }, (_, n) => ({ jsonrpc: '2.0', id: n, method: 'm' }));
    input.write(Buffer.concat(messages.map(frame)));
    expect(delivered).toEqual(messages.slice(0, 2));
    reader.resume();
    expect(delivered).toEqual(messages);
  });

  test('a body that is not valid UTF-8 is refused, never read with replacement characters', () => {
    /** A framed body with raw bytes where `@` stands. */
    const body = (text: string, bytes: number[]): Buffer => {
      const [before, after] = text.split('@') as [string, string];
      const bytesOf = Buffer.concat([Buffer.from(before), Buffer.from(bytes), Buffer.from(after)]);
      return Buffer.concat([Buffer.from(`Content-Length: ${bytesOf.length}\r\n\r\n`), bytesOf]);
    };
    const next = { jsonrpc: '2.0', method: 'next', params: { name: '\uFFFD' } };
    const bodies = [
      body('{"jsonrpc":"2.0","id":1,"method":"m","params":{"name":"@"}}', [0xff]),
      // An overlong encoding of "/".
      body('{"jsonrpc":"2.0","id":"a","method":"m","params":{"name":"@"}}', [0xc0, 0xaf]),
      // An id that holds the bad byte is not answered with what a lenient reading makes of it.
      body('{"jsonrpc":"2.0","id":"x@","method":"m"}', [0xff]),
      body('{"jsonrpc":"2.0","method":"m@"}', [0xed, 0xa0, 0x80]),
    ];
    const { delivered, replies } = feed(Buffer.concat([...bodies, frame(next)]), []);
    expect(replies).toMatchObject([
      { id: 1, error: { code: -32602, data: { code: 'CACHE_INVALID_PARAMS' } } },
      { id: 'a', error: { code: -32602 } },
      { id: null, error: { code: -32602 } },
      { id: null, error: { code: -32602 } },
    ]);
    expect(delivered).toEqual([next]);
  });

  test('an empty or non-JSON body is answered, and the next message still arrives', () => {
    const next = { jsonrpc: '2.0', method: 'next' };
    const { delivered, replies } = feed(Buffer.concat([Buffer.from('Content-Length: 0\r\n\r\n'), Buffer.from('Content-Length: 3\r\n\r\nabc'), frame(next)]), [5, 21, 30]);
    expect(replies).toMatchObject([{ error: { code: -32700 } }, { error: { code: -32700 } }]);
    expect(delivered).toEqual([next]);
  });
});
