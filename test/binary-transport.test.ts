import { describe, expect, onTestFinished, test } from 'vitest';
import { connect } from '../client/index.js';
import { startTestDaemon } from './support/daemon.js';
import { type Field, frame, RawBinaryClient } from './support/raw-binary-client.js';
import { RawClient } from './support/raw-client.js';

// The ops as PROTOCOL.md gives them, written out here so that a change to the declarations cannot pass unnoticed.
const [Get, GetSet, HandleSet, Release, SetOp, Delete, Clear, Status] = [0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08];
const [Cancel, Result, ErrorOp] = [0x0a, 0x80, 0x81];
const json = (value: unknown): Uint8Array => Buffer.from(JSON.stringify(value));

describe('the binary transport', () => {
  test('is agreed in initialize, and the connection then speaks frames', async () => {
    const { socketPath } = await startTestDaemon();
    const { client, answer } = await RawBinaryClient.open(socketPath);
    expect(answer).toMatchObject({ id: 0, result: { protocolVersion: 2, capabilities: { transport: 'binary', valueTransfer: 'base64' } } });
    const set = await client.call(SetOp, 1, [['strings', ['s']], ['string', 'k'], ['f64', 1700000000.25], ['f64', 0], ['f64', 0], ['string', 'json'], ['bytes', json({ a: 1 })]]);
    expect([set.op, set.requestId, set.remaining]).toEqual([Result, 1, 0]);
    const got = await client.call(Get, 2, [['strings', ['s']], ['string', 'k'], ['u8', 1]]);
    expect([got.op, got.requestId]).toEqual([Result, 2]);
    expect(got.u8()).toBe(1);
    const handle = got.u64();
    expect(got.u8()).toBe(1);
    expect(got.f64()).toBe(1700000000.25);
    expect(got.string()).toBe('json');
    expect(JSON.parse(got.bytes().toString())).toEqual({ a: 1 });
    expect(got.remaining).toBe(0);
    // The shared lock is held until the release frame: a getset that does not wait finds it taken.
    const refused = await client.call(GetSet, 3, [['strings', ['s']], ['string', 'k'], ['u8', 0]]);
    expect([refused.op, refused.u8(), refused.remaining]).toEqual([Result, 0, 0]);
    client.write(frame(Release, 0, [['u64', handle]]));
    const granted = await client.call(GetSet, 4, [['strings', ['s']], ['string', 'k'], ['u8', 0]]);
    expect(granted.u8()).toBe(1);
    const writeHandle = granted.u64();
    expect(granted.u8()).toBe(1);
    const written = await client.call(HandleSet, 5, [['u64', writeHandle], ['f64', 0], ['f64', 0], ['string', 'binary'], ['bytes', Buffer.from([1, 2, 3])]]);
    expect(written.op).toBe(Result);
    client.write(frame(Release, 0, [['u64', writeHandle]]));
    const reread = await client.call(Get, 6, [['strings', ['s']], ['string', 'k'], ['u8', 1]]);
    expect(reread.u8()).toBe(1);
    const readHandle = reread.u64();
    expect(reread.u8()).toBe(1);
    reread.f64();
    expect(reread.string()).toBe('binary');
    expect([...reread.bytes()]).toEqual([1, 2, 3]);
    const status = await client.call(Status, 9, [['u8', 0]]);
    expect(JSON.parse(status.string())).toMatchObject({ connections: 1, protocolVersion: 2, locksHeld: 1 });
    client.write(frame(Release, 0, [['u64', readHandle]]));
    expect((await client.call(Delete, 7, [['strings', ['s']], ['string', 'k']])).op).toBe(Result);
    expect((await client.call(Clear, 8, [['strings', []]])).op).toBe(Result);
    const after = await client.call(Status, 10, [['u8', 0]]);
    expect(JSON.parse(after.string())).toMatchObject({ locksHeld: 0, waiters: 0 });
  });

  test('a client that does not offer it, or a daemon that refuses the handshake, keeps JSON', async () => {
    const { socketPath } = await startTestDaemon();
    const plain = await RawClient.open(socketPath);
    expect(await plain.initialize()).toMatchObject({ result: { capabilities: { transport: 'json' } } });
    expect(await plain.request('cache/get', { scope: [], id: 'x' })).toMatchObject({ result: { item: null } });

    const { client, answer } = await RawBinaryClient.open(socketPath, { protocolVersion: 99 });
    expect(answer).toMatchObject({ error: { data: { code: 'CACHE_PROTOCOL_MISMATCH' } } });
    // Still JSON: a JSON request on the same connection is answered in JSON.
    const body = JSON.stringify({ jsonrpc: '2.0', id: 5, method: 'initialize', params: { clientName: 'again', pid: 1, protocolVersion: 2 } });
    client.write(Buffer.from(`Content-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`));
    const again = await new Promise<string>((resolve) => client.socket.once('data', (chunk: Buffer) => resolve(chunk.toString())));
    expect(again).toMatch(/"transport":"json"/);
  });

  test('frames sent right behind initialize, before its answer, are served', async () => {
    const { socketPath } = await startTestDaemon();
    const after = Buffer.concat([
      frame(SetOp, 1, [['strings', []], ['string', 'early'], ['f64', 1], ['f64', 0], ['f64', 0], ['string', 'json'], ['bytes', json('on time')]]),
      frame(Get, 2, [['strings', []], ['string', 'early'], ['u8', 1]]),
    ]);
    const { client } = await RawBinaryClient.open(socketPath, { after });
    expect((await client.next()).requestId).toBe(1);
    const got = await client.next();
    expect(got.requestId).toBe(2);
    expect(got.u8()).toBe(1);
    got.u64();
    got.u8();
    got.f64();
    got.string();
    expect(JSON.parse(got.bytes().toString())).toBe('on time');
  });

  test('frames split at every byte are read the same', async () => {
    const { socketPath } = await startTestDaemon();
    const { client } = await RawBinaryClient.open(socketPath);
    const bytes = Buffer.concat([
      frame(SetOp, 1, [['strings', ['a', 'b']], ['string', 'k'], ['f64', 2], ['f64', 0], ['f64', 0], ['string', 'json'], ['bytes', json('split')]]),
      frame(Get, 2, [['strings', ['a', 'b']], ['string', 'k'], ['u8', 1]]),
    ]);
    for (const byte of bytes) {
      client.write(Buffer.from([byte]));
      await new Promise((resolve) => client.socket.write(Buffer.alloc(0), resolve));
    }
    expect((await client.next()).op).toBe(Result);
    const got = await client.next();
    expect(got.u8()).toBe(1);
    got.u64();
    expect(got.u8()).toBe(1);
  });

  test('a frame that does not match its op is refused with a code, and the connection goes on', async () => {
    const { socketPath, logs } = await startTestDaemon();
    const { client } = await RawBinaryClient.open(socketPath);
    const cases: [number, Parameters<typeof frame>[2], string][] = [
      [0x7f, [], 'CACHE_INVALID_REQUEST'],
      [Get, [['strings', []]], 'CACHE_INVALID_PARAMS'],
      [Get, [['strings', []], ['string', 'k'], ['u8', 9]], 'CACHE_INVALID_PARAMS'],
      [Get, [['strings', ['']], ['string', 'k']], 'CACHE_INVALID_PARAMS'],
      [Get, [['u32', 1_000_000]], 'CACHE_INVALID_PARAMS'],
      [GetSet, [['strings', []], ['string', 'k'], ['u8', 2]], 'CACHE_INVALID_PARAMS'],
      [SetOp, [['strings', []], ['string', 'k'], ['f64', 1], ['f64', 0], ['f64', 0], ['string', 'bad name'], ['bytes', json(1)]], 'CACHE_INVALID_PARAMS'],
      [SetOp, [['strings', []], ['string', 'k'], ['f64', Number.NaN], ['f64', 0], ['f64', 0], ['string', 'json'], ['bytes', json(1)]], 'CACHE_INVALID_PARAMS'],
      [HandleSet, [['u64', 2 ** 53], ['f64', 0], ['f64', 0], ['string', 'json'], ['bytes', json(1)]], 'CACHE_INVALID_PARAMS'],
      [HandleSet, [['u64', 12345], ['f64', 0], ['f64', 0], ['string', 'json'], ['bytes', json(1)]], 'CACHE_LOCK_NOT_HELD'],
    ];
    let id = 100;
    for (const [op, fields, code] of cases) {
      const answer = await client.call(op, ++id, fields);
      expect([answer.op, answer.requestId, answer.errorCode]).toEqual([ErrorOp, id, code]);
    }
    // A malformed release has no answer; it is logged and dropped, and the next request is answered.
    client.write(frame(Release, 0, [['u8', 1]]));
    const after = await client.call(Get, 7, [['strings', []], ['string', 'still here'], ['u8', 1]]);
    expect([after.op, after.requestId]).toEqual([Result, 7]);
    expect(logs.some((line) => line.includes('malformed frame'))).toBe(true);
  });

  test('a frame length out of bounds closes that connection only', async () => {
    const { socketPath } = await startTestDaemon({ maxMessageBytes: 64 * 1024 });
    const bystander = await connect<string>({ socketPath, autoStart: false });
    onTestFinished(() => bystander.close());
    for (const length of [3, 64 * 1024 + 1]) {
      const { client } = await RawBinaryClient.open(socketPath);
      const header = Buffer.alloc(9);
      header.writeUInt32LE(length);
      client.write(header);
      await client.closed;
    }
    await bystander.set('fine', 'yes');
    await using got = await bystander.get('fine');
    expect(await got.item!.value()).toBe('yes');
  });

  test('cancel ends a request that waits for a lock', async () => {
    const { socketPath } = await startTestDaemon();
    const { client } = await RawBinaryClient.open(socketPath);
    const held = await client.call(GetSet, 1, [['strings', []], ['string', 'k'], ['u8', 1]]);
    expect(held.u8()).toBe(1);
    const handle = held.u64();
    client.write(frame(Get, 2, [['strings', []], ['string', 'k'], ['u8', 1]]));
    client.write(frame(Cancel, 2));
    const cancelled = await client.next();
    expect([cancelled.requestId, cancelled.errorCode]).toEqual([2, 'CACHE_CANCELLED']);
    client.write(frame(Release, 0, [['u64', handle]]));
    const free = await client.call(GetSet, 3, [['strings', []], ['string', 'k'], ['u8', 0]]);
    expect(free.u8()).toBe(1);
  });

  test('ids with unpaired surrogates stay distinct from their replacement characters', async () => {
    const { socketPath } = await startTestDaemon();
    const cache = await connect<string>({ socketPath, autoStart: false });
    onTestFinished(() => cache.close());
    const lone = 'a\uD800b';
    await cache.set(lone, 'lone');
    await cache.set('a\uFFFDb', 'replacement');
    await cache.withScope('\uDC00').set('x', 'scoped');
    await using got = await cache.get(lone);
    expect(await got.item!.value()).toBe('lone');
    await using scoped = await cache.withScope('\uDC00').get('x');
    expect(await scoped.item!.value()).toBe('scoped');
    await using other = await cache.withScope('\uFFFD').get('x');
    expect(other.item).toBeNull();
  });

  test('ids and scope names that are not valid UTF-8 are refused with CACHE_INVALID_PARAMS, and the connection goes on', async () => {
    const { socketPath } = await startTestDaemon();
    const observer = await connect<string>({ socketPath, autoStart: false });
    onTestFinished(() => observer.close());
    const { client } = await RawBinaryClient.open(socketPath);
    // A `bytes` field has the layout of a UTF-8 `string`: these are strings of raw bytes. 0xff and a lone 0xc3 are
    // two different byte strings that a lenient decoder reads as the same "a\uFFFD"; 0xed 0xa0 0x80 is an
    // encoded surrogate, which UTF-8 forbids.
    const raw = (...bytes: number[]): Field => ['bytes', Buffer.from(bytes)];
    const value: Field[] = [['f64', 1], ['f64', 0], ['f64', 0], ['string', 'json'], ['bytes', json('v')]];
    const refused: Field[][] = [
      [['strings', []], raw(0x61, 0xff), ...value],
      [['strings', []], raw(0x61, 0xc3), ...value],
      [['u32', 1], raw(0x73, 0xed, 0xa0, 0x80), ['string', 'k'], ...value],
    ];
    for (const [n, fields] of refused.entries()) {
      const answer = await client.call(SetOp, n + 1, fields);
      expect([answer.requestId, answer.errorCode], `set ${n}`).toEqual([n + 1, 'CACHE_INVALID_PARAMS']);
    }
    const get = await client.call(Get, 9, [['strings', []], raw(0x61, 0xfe), ['u8', 1]]);
    expect(get.errorCode).toBe('CACHE_INVALID_PARAMS');
    const lenient: [typeof observer | ReturnType<typeof observer.withScope>, string][] = [[observer, 'a\uFFFD'], [observer.withScope('s\uFFFD'), 'k']];
    for (const [cache, id] of lenient) {
      const got = await cache.get(id);
      expect(got.item).toBeNull();
      await got.release();
    }
    const fine = await client.call(SetOp, 10, [['strings', []], ['string', 'a\uFFFD'], ...value]);
    expect(fine.op).toBe(Result);
  });

  test('a client that stops reading is not read from until it catches up, and then gets every answer', async () => {
    const { socketPath } = await startTestDaemon();
    const writer = await connect<Uint8Array>({ socketPath, autoStart: false, codec: 'binary' });
    onTestFinished(() => writer.close());
    await writer.set('big', new Uint8Array(256 * 1024).fill(1));
    const { client } = await RawBinaryClient.open(socketPath);
    client.socket.pause();
    const count = 1000;
    // All in one write: the daemon must stop dispatching even the frames of a chunk it has already read.
    client.write(Buffer.concat(Array.from({ length: count }, (_, n) => frame(Get, n + 1, [['strings', []], ['string', 'big'], ['u8', 1]]))));
    // 1000 answers of 256 KiB each are 250 MiB: the daemon stops reading long before it has answered them all.
    let hits = -1;
    for (;;) {
      const { hits: now } = await writer.status();
      if (now === hits) break;
      hits = now;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    expect(hits).toBeLessThan(count / 2);
    client.socket.resume();
    const seen = new Set<number>();
    while (seen.size < count) {
      const answer = await client.next();
      expect(answer.op).toBe(Result);
      seen.add(answer.requestId);
    }
    expect((await writer.status()).hits).toBeGreaterThanOrEqual(count);
  });

  test('closing a connection drops its own queued requests before releasing its locks', async () => {
    const { socketPath } = await startTestDaemon();
    const reader = await connect<string>({ socketPath, autoStart: false });
    onTestFinished(() => reader.close());
    const { client } = await RawBinaryClient.open(socketPath);
    const held = await client.call(GetSet, 1, [['strings', []], ['string', 'k'], ['u8', 1]]);
    expect(held.u8()).toBe(1);
    // Queued behind the connection's own lock; so is a second request that reuses the id.
    for (const value of ['zombie', 'zombie 2']) {
      client.write(frame(SetOp, 2, [['strings', []], ['string', 'k'], ['f64', 1], ['f64', 0], ['f64', 0], ['string', 'json'], ['bytes', json(value)]]));
    }
    expect(JSON.parse((await client.call(Status, 3, [['u8', 0]])).string())).toMatchObject({ locksHeld: 1, waiters: 2 });
    client.socket.destroy();
    let status = await reader.status();
    while (status.connections > 1) status = await reader.status();
    expect(status).toMatchObject({ locksHeld: 0, waiters: 0 });
    await using got = await reader.get('k');
    expect(got.item).toBeNull();
  });

  test('only an initialize that is the first message can switch: after an answer in JSON the connection stays JSON', async () => {
    const { socketPath } = await startTestDaemon();
    const raw = await RawClient.open(socketPath);
    raw.writeRaw('Content-Length: 1\r\n\r\n{');
    raw.send({ jsonrpc: '2.0', id: 1, method: 'initialize', params: { clientName: 'late', pid: 1, protocolVersion: 2, transports: ['binary'] } });
    expect(await raw.next()).toMatchObject({ error: { code: -32700 } });
    expect(await raw.next()).toMatchObject({ id: 1, result: { capabilities: { transport: 'json' } } });
    expect(await raw.request('cache/get', { scope: [], id: 'x' })).toMatchObject({ result: { item: null } });
  });

  test('a frame whose length field is exactly the limit is accepted', async () => {
    const { socketPath } = await startTestDaemon({ maxMessageBytes: 64 * 1024 });
    const { client } = await RawBinaryClient.open(socketPath);
    const fields: Parameters<typeof frame>[2] = [['strings', []], ['string', 'k'], ['f64', 1], ['f64', 0], ['f64', 0], ['string', 'binary']];
    const overhead = frame(SetOp, 1, [...fields, ['bytes', new Uint8Array(0)]]).length - 4;
    const answer = await client.call(SetOp, 1, [...fields, ['bytes', new Uint8Array(64 * 1024 - overhead)]]);
    expect([answer.op, answer.requestId]).toEqual([Result, 1]);
  });

  test('closing a connection does not run a request queued only behind its own queued clear', async () => {
    const { socketPath } = await startTestDaemon();
    const reader = await connect<string>({ socketPath, autoStart: false });
    onTestFinished(() => reader.close());
    const { client: holder } = await RawBinaryClient.open(socketPath);
    expect((await holder.call(Get, 1, [['strings', ['s']], ['string', 'y'], ['u8', 1]])).op).toBe(Result);
    const { client } = await RawBinaryClient.open(socketPath);
    // The clear waits for the holder's shared lock; the set waits only for the clear.
    client.write(frame(Clear, 1, [['strings', ['s']]]));
    client.write(frame(SetOp, 2, [['strings', ['s']], ['string', 'x'], ['f64', 1], ['f64', 0], ['f64', 0], ['string', 'json'], ['bytes', json('zombie')]]));
    expect(JSON.parse((await client.call(Status, 3, [['u8', 0]])).string())).toMatchObject({ locksHeld: 1, waiters: 2 });
    client.socket.destroy();
    let status = await reader.status();
    while (status.connections > 2) status = await reader.status();
    expect(status).toMatchObject({ locksHeld: 1, waiters: 0 });
    const got = await holder.call(Get, 4, [['strings', ['s']], ['string', 'x'], ['u8', 1]]);
    expect(got.u8()).toBe(1);
    got.u64();
    expect(got.u8()).toBe(0);
  });
});
