import fc from 'fast-check';
import { describe, expect, test } from 'vitest';
import { FrameCursor, FrameDecoder, FramingError, MalformedFrame } from '../src/wire/frame-decoder.js';
import { FrameEncoder } from '../src/wire/frame-encoder.js';
import { FrameWriter } from '../src/wire/frame-writer.js';
import { Writable } from 'node:stream';

type Field = { type: 'u8'; value: number } | { type: 'u32'; value: number } | { type: 'u64'; value: number } | { type: 'f64'; value: number } | { type: 'string'; value: string } | { type: 'strings'; value: string[] } | { type: 'bytes'; value: Uint8Array };

const field: fc.Arbitrary<Field> = fc.oneof(
  fc.record({ type: fc.constant('u8' as const), value: fc.nat(255) }),
  fc.record({ type: fc.constant('u32' as const), value: fc.nat(0xffff_ffff) }),
  fc.record({ type: fc.constant('u64' as const), value: fc.maxSafeNat() }),
  fc.record({ type: fc.constant('f64' as const), value: fc.double({ noNaN: true }) }),
  // Full Unicode, unpaired surrogates included: those travel as UTF-16.
  fc.record({ type: fc.constant('string' as const), value: fc.string({ unit: 'binary' }) }),
  fc.record({ type: fc.constant('strings' as const), value: fc.array(fc.string({ unit: 'grapheme' }), { maxLength: 4 }) }),
  fc.record({ type: fc.constant('bytes' as const), value: fc.oneof(fc.uint8Array({ maxLength: 64 }), fc.uint8Array({ minLength: 8192, maxLength: 20_000 })) }),
);

const message = fc.record({ op: fc.nat(255), requestId: fc.nat(0xffff_ffff), fields: fc.array(field, { maxLength: 6 }) });

function write(encoder: FrameEncoder, f: Field): void {
  if (f.type === 'strings') encoder.strings(f.value);
  else if (f.type === 'string') encoder.string(f.value);
  else if (f.type === 'bytes') encoder.bytes(f.value);
  else encoder[f.type](f.value);
}

/** A field as read back; bytes as hex, which compares in one step (toEqual on typed arrays goes byte by byte, slowly). */
function read(cursor: FrameCursor, f: Field): unknown {
  return f.type === 'bytes' ? cursor.bytes().toString('hex') : cursor[f.type]();
}

describe('binary frames', () => {
  test('any frames, cut into any chunks, decode to what was encoded', () => {
    fc.assert(
      fc.property(fc.array(message, { minLength: 1, maxLength: 6 }), fc.array(fc.nat(200), { maxLength: 20 }), (messages, cuts) => {
        const encoder = new FrameEncoder();
        for (const { op, requestId, fields } of messages) {
          encoder.begin(op, requestId);
          for (const f of fields) write(encoder, f);
          encoder.end();
        }
        const stream = Buffer.concat(encoder.take());
        const decoder = new FrameDecoder({ maxFrameBytes: 1 << 20 });
        const decoded: unknown[] = [];
        const onFrame = (cursor: FrameCursor): void => {
          const expected = messages[decoded.length]!;
          decoded.push({ op: cursor.op, requestId: cursor.requestId, fields: expected.fields.map((f) => read(cursor, f)) });
          cursor.done();
        };
        let at = 0;
        for (const cut of cuts) {
          decoder.push(stream.subarray(at, Math.min(stream.length, at + cut)), onFrame);
          at = Math.min(stream.length, at + cut);
        }
        decoder.push(stream.subarray(at), onFrame);
        expect(decoded).toEqual(messages.map(({ op, requestId, fields }) => ({ op, requestId, fields: fields.map((f) => (f.type === 'bytes' ? Buffer.from(f.value).toString('hex') : f.value)) })));
      }),
      { numRuns: 300 },
    );
  });

  test('borrowed chunks, overwritten after each push, still decode: kept bytes are copies', () => {
    fc.assert(
      fc.property(
        fc.array(fc.oneof(fc.uint8Array({ maxLength: 64 }), fc.uint8Array({ minLength: 300, maxLength: 2000 })), { minLength: 1, maxLength: 6 }),
        fc.array(fc.nat(700), { maxLength: 20 }),
        (values, cuts) => {
          const encoder = new FrameEncoder();
          values.forEach((value, n) => encoder.begin(1, n).bytes(value).end());
          const stream = Buffer.concat(encoder.take());
          const decoder = new FrameDecoder({ maxFrameBytes: 1 << 20 });
          const kept: Buffer[] = [];
          const scratch = Buffer.alloc(stream.length);
          let at = 0;
          for (const cut of [...cuts, stream.length]) {
            const end = Math.min(stream.length, at + cut);
            const length = stream.copy(scratch, 0, at, end);
            decoder.push(scratch.subarray(0, length), (cursor) => void kept.push(cursor.keptBytes()), true);
            scratch.fill(0xee);
            at = end;
          }
          expect(kept.map((bytes) => new Uint8Array(bytes))).toEqual(values.map((value) => new Uint8Array(value)));
        },
      ),
      { numRuns: 300 },
    );
  });

  test('frames held back by a stop come out, in order, on the next push', () => {
    fc.assert(
      fc.property(fc.array(message, { minLength: 1, maxLength: 6 }), fc.array(fc.nat(200), { maxLength: 20 }), fc.array(fc.boolean()), (messages, cuts, stops) => {
        const encoder = new FrameEncoder();
        for (const { op, requestId } of messages) encoder.begin(op, requestId).end();
        const stream = Buffer.concat(encoder.take());
        const decoder = new FrameDecoder({ maxFrameBytes: 1 << 20 });
        const seen: number[] = [];
        let stopped = false;
        const onFrame = (cursor: FrameCursor): boolean => {
          seen.push(cursor.requestId);
          stopped = stops[seen.length - 1] ?? false;
          return !stopped;
        };
        const drain = (): void => {
          while (stopped) {
            stopped = false;
            decoder.push(Buffer.alloc(0), onFrame);
          }
        };
        let at = 0;
        for (const cut of [...cuts, stream.length]) {
          decoder.push(stream.subarray(at, Math.min(stream.length, at + cut)), onFrame);
          at = Math.min(stream.length, at + cut);
          drain();
        }
        expect(seen).toEqual(messages.map(({ requestId }) => requestId));
      }),
      { numRuns: 300 },
    );
  });

  test('a frame cut across chunks gets a buffer of its own size; the frames after it stay views of the chunk', () => {
    const encoder = new FrameEncoder();
    encoder.begin(1, 1).bytes(Buffer.alloc(70_000, 1)).end();
    encoder.begin(1, 2).bytes(Buffer.alloc(10, 2)).end();
    const stream = Buffer.concat(encoder.take());
    const first = stream.length - 10 - 4 - 9;
    const decoder = new FrameDecoder({ maxFrameBytes: 1 << 20 });
    const frames: { id: number; bytes: Buffer }[] = [];
    const onFrame = (cursor: FrameCursor): void => void frames.push({ id: cursor.requestId, bytes: cursor.bytes() });
    const tail = Buffer.from(stream.subarray(40_000));
    decoder.push(Buffer.from(stream.subarray(0, 40_000)), onFrame);
    decoder.push(tail, onFrame);
    expect(frames.map((f) => f.id)).toEqual([1, 2]);
    expect(frames[0]!.bytes.buffer.byteLength).toBe(first);
    expect(frames[0]!.bytes.equals(Buffer.alloc(70_000, 1))).toBe(true);
    expect(frames[1]!.bytes.buffer).toBe(tail.buffer);
  });

  test('a frame shorter than its header or over the limit breaks the stream', () => {
    const decoder = new FrameDecoder({ maxFrameBytes: 100 });
    const short = Buffer.alloc(9);
    short.writeUInt32LE(4);
    expect(() => decoder.push(short, () => {})).toThrow(FramingError);
    const long = Buffer.alloc(4);
    long.writeUInt32LE(101);
    expect(() => new FrameDecoder({ maxFrameBytes: 100 }).push(long, () => {})).toThrow(FramingError);
  });

  test('reading past a frame\u2019s fields, or leaving some, is a malformed frame', () => {
    const encoder = new FrameEncoder();
    encoder.begin(1, 7).u32(5).end();
    const cursor = new FrameCursor(Buffer.concat(encoder.take()));
    expect(() => cursor.done()).toThrow(MalformedFrame);
    expect(cursor.u32()).toBe(5);
    cursor.done();
    expect(() => cursor.u8()).toThrow(MalformedFrame);
  });

  test('a writer that flushes per turn sends the frames of two callbacks of one turn in one write, per tick in two', async () => {
    const writesOf = async (flushAt: 'tick' | 'turn'): Promise<Buffer[]> => {
      const writes: Buffer[] = [];
      const output = new Writable({
        write(chunk: Buffer, _encoding, done) {
          writes.push(chunk);
          done();
        },
        writev(chunks, done) {
          writes.push(Buffer.concat(chunks.map((c) => c.chunk as Buffer)));
          done();
        },
      });
      const writer = new FrameWriter(output, { flushAt });
      const send = (id: number): void => {
        writer.encoder.begin(1, id).u32(id);
        writer.sent();
      };
      // Two immediates queued together run in the same check phase of one turn, as a turn's socket reads run in its
      // poll phase (two timers of 0 ms could fall in different turns when the clock ticks between them, on a busy machine).
      await new Promise<void>((resolve) => {
        setImmediate(() => send(1));
        setImmediate(() => {
          send(2);
          setImmediate(() => setImmediate(resolve));
        });
      });
      return writes;
    };
    const ids = (writes: Buffer[]): number[][] =>
      writes.map((write) => {
        const seen: number[] = [];
        new FrameDecoder({ maxFrameBytes: 100 }).push(write, (frame) => void seen.push(frame.requestId));
        return seen;
      });
    expect(ids(await writesOf('tick'))).toEqual([[1], [2]]);
    expect(ids(await writesOf('turn'))).toEqual([[1, 2]]);
  });

  test('a writer writes at once when its group is full', () => {
    const writes: number[] = [];
    const output = new Writable({
      write(chunk: Buffer, _encoding, done) {
        writes.push(chunk.length);
        done();
      },
    });
    const writer = new FrameWriter(output, { flushAfterFrames: 3, flushAt: 'turn' });
    for (let id = 1; id <= 3; id++) {
      writer.encoder.begin(1, id);
      writer.sent();
    }
    expect(writes).toHaveLength(1);
  });
});
