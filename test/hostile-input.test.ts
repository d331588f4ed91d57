import fc from 'fast-check';
import { once } from 'node:events';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import { connect as netConnect } from 'node:net';
import { join } from 'node:path';
import { describe, expect, onTestFinished, test } from 'vitest';
import { connect, type RemoteCache } from '../client/index.js';
import { startTestDaemon } from './support/daemon.js';
import { startDaemonProcess } from './support/processes.js';
import { type Field, frame as binaryFrame, RawBinaryClient } from './support/raw-binary-client.js';
import { RawClient } from './support/raw-client.js';
import { tempDir } from './support/temp-dir.js';

// `shutdown` is left out: it is a legal request that stops the daemon (tested on its own).
const METHODS = ['initialize', 'exit', 'cache/get', 'cache/getset', 'cache/handleSet', 'cache/release', 'cache/set', 'cache/delete', 'cache/clear', 'cache/list', 'daemon/status', 'daemon/locks', 'daemon/gc', 'daemon/verify', 'cache/reserveFile', 'cache/setFile', 'cache/handleSetFile', 'cache/discardFile', '$/cancelRequest', 'nope'];

function frame(body: string | Uint8Array): Buffer {
  const bytes = typeof body === 'string' ? Buffer.from(body) : Buffer.from(body);
  return Buffer.concat([Buffer.from(`Content-Length: ${bytes.length}\r\n\r\n`), bytes]);
}

/** Params that are sometimes right, sometimes missing fields, extra fields or wrong types. */
const params = fc.oneof(
  fc.record(
    {
      scope: fc.oneof(fc.array(fc.string()), fc.string(), fc.integer(), fc.constant(null)),
      id: fc.oneof(fc.string(), fc.integer(), fc.constant(null), fc.array(fc.string())),
      value: fc.oneof(fc.base64String(), fc.string(), fc.integer()),
      encoding: fc.oneof(fc.constantFrom('json', 'binary', ''), fc.string()),
      handle: fc.oneof(fc.nat(20), fc.integer(), fc.string()),
      reservation: fc.oneof(fc.nat(20), fc.integer(), fc.string()),
      wait: fc.oneof(fc.boolean(), fc.string()),
      modified: fc.oneof(fc.double(), fc.string()),
      protocolVersion: fc.oneof(fc.constant(2), fc.integer()),
      extra: fc.jsonValue(),
    },
    { requiredKeys: [] },
  ),
  fc.jsonValue(),
);

/** Well-formed requests that take locks, so that a connection that dies holding them is part of the mix. */
const locking = fc
  .record({ id: fc.nat(), method: fc.constantFrom('cache/get', 'cache/getset', 'cache/clear'), key: fc.constantFrom('a', 'b', 'probe'), scope: fc.constantFrom([], ['s']) })
  .map(({ id, method, key, scope }) => frame(JSON.stringify({ jsonrpc: '2.0', id, method, params: { scope, id: key } })));

const message = fc.oneof(
  locking,
  fc.record({ jsonrpc: fc.constant('2.0'), id: fc.oneof(fc.nat(), fc.string()), method: fc.constantFrom(...METHODS), params }).map((m) => frame(JSON.stringify(m))),
  fc.record({ jsonrpc: fc.constant('2.0'), method: fc.constantFrom(...METHODS), params }).map((m) => frame(JSON.stringify(m))),
  fc.array(fc.record({ jsonrpc: fc.constant('2.0'), id: fc.nat(), method: fc.constantFrom(...METHODS), params }), { maxLength: 4 }).map((batch) => frame(JSON.stringify(batch))),
  fc.jsonValue().map((value) => frame(JSON.stringify(value))),
  fc.string().map((text) => frame(text)),
  fc.uint8Array({ maxLength: 300 }).map((bytes) => frame(bytes)),
  fc.uint8Array({ maxLength: 300 }).map((bytes) => Buffer.from(bytes)),
  fc.constantFrom('Content-Length: 9999999999\r\n\r\n', 'Content-Length: -1\r\n\r\n', 'Content-Length: 12\r\n\r\n{"jsonrpc":', '\r\n\r\n').map((text) => Buffer.from(text)),
);

/** Checks that every other client is still served, and that nothing of the hostile connection `tried` is left. */
async function stillServing(cache: RemoteCache<unknown>, tried: number): Promise<void> {
  await cache.set('probe', tried);
  await using got = await cache.get('probe');
  expect(await got.item!.value()).toBe(tried);
  await got.release();
  await quiet(cache);
}

async function quiet(cache: RemoteCache<unknown>): Promise<void> {
  // The daemon notices a closed connection on its own schedule; status round trips until it has.
  for (;;) {
    const status = await cache.status();
    if (status.connections === 1) {
      expect(status).toMatchObject({ locksHeld: 0, waiters: 0 });
      return;
    }
    await new Promise((resolve) => setImmediate(resolve));
  }
}

describe('hostile and broken input', () => {
  test('generated input never stops the daemon, leaks a lock, or keeps a dead connection', async () => {
    const { socketPath, logs } = await startTestDaemon();
    const bystander = await connect({ socketPath, autoStart: false });
    onTestFinished(() => bystander.close());
    let tried = 0;
    await fc.assert(
      fc.asyncProperty(fc.boolean(), fc.array(message, { minLength: 1, maxLength: 6 }), async (initialize, messages) => {
        tried++;
        const raw = await RawClient.open(socketPath);
        if (initialize) await raw.initialize();
        for (const bytes of messages) raw.writeRaw(bytes);
        raw.socket.end();
        await raw.closed;
        await stillServing(bystander, tried);
      }),
      { numRuns: 200 },
    );
    const closedForFraming = logs.filter((line) => line.includes('closing connection')).length;
    console.log(`hostile input: ${tried} generated connections, ${closedForFraming} closed for their framing`);
    expect(closedForFraming).toBeGreaterThan(0);
  });

  test('generated binary frames never stop the daemon, leak a lock, or keep a dead connection', async () => {
    const { socketPath, logs } = await startTestDaemon({ maxMessageBytes: 64 * 1024 });
    const bystander = await connect({ socketPath, autoStart: false });
    onTestFinished(() => bystander.close());
    const field: fc.Arbitrary<Field> = fc.oneof(
      fc.tuple(fc.constant('u8' as const), fc.nat(255)),
      fc.tuple(fc.constant('u32' as const), fc.oneof(fc.nat(3), fc.nat(0xffff_ffff))),
      fc.tuple(fc.constant('u64' as const), fc.nat(40)),
      fc.tuple(fc.constant('f64' as const), fc.double()),
      fc.tuple(fc.constant('string' as const), fc.oneof(fc.constantFrom('a', 'b', 'json', 'binary', ''), fc.string())),
      fc.tuple(fc.constant('strings' as const), fc.oneof(fc.constant([] as string[]), fc.array(fc.string(), { maxLength: 3 }))),
      fc.tuple(fc.constant('bytes' as const), fc.uint8Array({ maxLength: 64 })),
    );
    // Ops 0x01-0x0e are the real ones; the others and arbitrary fields test the refusals. Shutdown (0x09) is left
    // out: it is a legal request that stops the daemon.
    const op = fc.oneof(fc.constantFrom(1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 14), fc.nat(255).filter((n) => n !== 9));
    const frames = fc.oneof(
      fc.record({ op, id: fc.nat(20), fields: fc.array(field, { maxLength: 6 }) }).map(({ op, id, fields }) => binaryFrame(op, id, fields)),
      fc.record({ op: fc.constantFrom(1, 2), id: fc.nat(20), key: fc.constantFrom('a', 'b') }).map(({ op, id, key }) =>
        binaryFrame(op, id, [['strings', []], ['string', key], ['u8', 1]]),
      ),
      fc.uint8Array({ maxLength: 64 }).map((bytes) => Buffer.from(bytes)),
    );
    let tried = 0;
    await fc.assert(
      fc.asyncProperty(fc.array(frames, { minLength: 1, maxLength: 8 }), async (sent) => {
        tried++;
        const { client } = await RawBinaryClient.open(socketPath);
        for (const bytes of sent) client.write(bytes);
        client.socket.end();
        await client.closed;
        await stillServing(bystander, tried);
      }),
      { numRuns: 200 },
    );
    const closedForFraming = logs.filter((line) => line.includes('closing connection')).length;
    console.log(`hostile binary input: ${tried} generated connections, ${closedForFraming} closed for their framing`);
    expect(closedForFraming).toBeGreaterThan(0);
  });

  test('a JSON client that pipelines gets of a large value and never reads is not read from: memory stays bounded, others are served, and it gets every answer once it reads', async () => {
    const dir = await tempDir('hd-');
    const daemon = await startDaemonProcess({ socketPath: join(dir, 's.sock'), dataDir: join(dir, 'data') });
    const memory = async (field: 'VmRSS' | 'VmHWM'): Promise<number> =>
      Number(new RegExp(`${field}:\\s+(\\d+)`).exec(await readFile(`/proc/${daemon.child.pid}/status`, 'utf8'))![1]) * 1024;
    const cache = await connect<Uint8Array>({ socketPath: daemon.socketPath, autoStart: false, codec: 'binary' });
    onTestFinished(() => cache.close());
    const value = new Uint8Array(1 << 20).fill(7);
    await cache.set('big', value);
    const before = await memory('VmHWM');
    const raw = await RawClient.open(daemon.socketPath);
    await raw.initialize();
    raw.socket.pause();
    // 100 answers of 1.4 MiB each (the value in base64): 140 MiB if the daemon answered them all at once.
    const count = 100;
    const gets = Array.from({ length: count }, (_, n) => frame(JSON.stringify({ jsonrpc: '2.0', id: 100 + n, method: 'cache/get', params: { scope: [], id: 'big' } })));
    // All in one write: the daemon must stop handling even the messages of a chunk it has already read.
    raw.writeRaw(Buffer.concat(gets));
    const paused = (): boolean => daemon.log.some((line) => line.includes('does not read its answers'));
    let status = await cache.status();
    while (!paused() && status.hits < count) status = await cache.status();
    expect(paused()).toBe(true);
    // While it is paused, everyone else is served, and its requests wait unread.
    await cache.set('small', new Uint8Array([1]));
    const small = await cache.get('small');
    expect(await small.item!.value()).toEqual(new Uint8Array([1]));
    await small.release();
    status = await cache.status();
    expect(status.hits).toBeLessThan(count / 4);
    const grown = (await memory('VmHWM')) - before;
    console.log(`JSON flow control: ${status.hits} of ${count} gets answered while the client did not read; peak RSS grew by ${(grown / 2 ** 20).toFixed(1)} MiB`);
    expect(grown).toBeLessThan(96 * (1 << 20));
    // Once it reads, every request is answered, in full.
    raw.socket.resume();
    const seen = new Set<unknown>();
    const base64Length = Math.ceil(value.length / 3) * 4;
    while (seen.size < count) {
      const answer = (await raw.next()) as { id: number; result: { handle: number; item: { value: string } } };
      expect(answer.result.item.value.length).toBe(base64Length);
      seen.add(answer.id);
      raw.send({ jsonrpc: '2.0', method: 'cache/release', params: { handle: answer.result.handle } });
    }
    expect(Math.min(...(seen as Set<number>))).toBe(100);
    expect(Math.max(...(seen as Set<number>))).toBe(100 + count - 1);
    // Its messages are handled in order: this answer comes after every release.
    expect(await raw.request('daemon/status')).toMatchObject({ result: { locksHeld: 0 } });
  });

  test('streaming garbage is cut off after the header limit, so the daemon\u2019s memory stays flat', async () => {
    const dir = await tempDir('hd-');
    const daemon = await startDaemonProcess({ socketPath: join(dir, 's.sock'), dataDir: join(dir, 'data') });
    /** The daemon's peak resident memory so far. */
    const peak = async (): Promise<number> => Number(/VmHWM:\s+(\d+)/.exec(await readFile(`/proc/${daemon.child.pid}/status`, 'utf8'))![1]) * 1024;
    const before = await peak();
    let sent = 0;
    for (let connection = 0; connection < 8; connection++) {
      const socket = netConnect(daemon.socketPath);
      socket.on('error', () => {});
      await once(socket, 'connect');
      const chunk = Buffer.alloc(1 << 20, 'x');
      // Up to 64 MiB each, unless the daemon hangs up first (it should, after 4 KiB).
      while (sent < (connection + 1) * 64 * (1 << 20) && !socket.destroyed && socket.writable) {
        sent += chunk.length;
        if (!socket.write(chunk)) {
          await new Promise<void>((resolve) => {
            const done = (): void => {
              socket.off('drain', done);
              socket.off('close', done);
              resolve();
            };
            socket.on('drain', done);
            socket.on('close', done);
          });
        }
      }
      socket.destroy();
    }
    const cache = await connect({ socketPath: daemon.socketPath, autoStart: false });
    onTestFinished(() => cache.close());
    expect((await cache.status()).connections).toBe(1);
    expect(daemon.log.filter((line) => line.includes('a header longer than 4096 bytes'))).toHaveLength(8);
    // Each connection was cut off long before its 64 MiB: only what sat in socket buffers got through.
    expect(sent).toBeLessThan(8 * 16 * (1 << 20));
    expect(await peak()).toBeLessThan(before + 32 * (1 << 20));
  });
});

describe('reserved files: a connection commits only its own reservations, by number', () => {
  /** The files in the daemon's temp/ directory. */
  const tempFiles = async (dataDir: string): Promise<string[]> => readdir(join(dataDir, 'temp')).catch(() => []);
  const codeOf = (reply: Record<string, unknown>): unknown => (reply.error as { data?: { code?: string } } | undefined)?.data?.code ?? reply.result;

  test("another connection's reservation, unknown numbers and bad numbers are refused, and change nothing", async () => {
    const { socketPath, dataDir } = await startTestDaemon();
    const owner = await RawClient.open(socketPath);
    const other = await RawClient.open(socketPath);
    await owner.initialize();
    await other.initialize();
    await owner.request('cache/set', { scope: [], id: 'x', encoding: 'json', value: Buffer.from('"old"').toString('base64') });
    const reserved = (await owner.request('cache/reserveFile')).result as { reservation: number; path: string | null };
    // A client that did not prove it reads the daemon's files is given no path.
    expect(reserved).toMatchObject({ reservation: expect.any(Number), path: null });
    const [name] = await tempFiles(dataDir);
    await writeFile(join(dataDir, 'temp', name!), '"new"');
    const set = (client: RawClient, reservation: unknown) => client.request('cache/setFile', { scope: [], id: 'x', reservation, encoding: 'json' });
    expect(codeOf(await set(other, reserved.reservation))).toBe('CACHE_FILE_REFUSED');
    // A discard of another connection's number is ignored: the file stays the owner's.
    expect(codeOf(await other.request('cache/discardFile', { reservation: reserved.reservation }))).toBeNull();
    expect(await tempFiles(dataDir)).toEqual([name]);
    for (const unknown of [reserved.reservation + 1, 2 ** 40]) expect(codeOf(await set(owner, unknown))).toBe('CACHE_FILE_REFUSED');
    for (const bad of [-1, 1.5, 'one', null]) expect(codeOf(await set(owner, bad))).toBe('CACHE_INVALID_PARAMS');
    // Through a getset handle: only a getset this connection holds, and only its own reservation.
    const gs = (await other.request('cache/getset', { scope: [], id: 'x' })).result as { handle: number };
    expect(codeOf(await owner.request('cache/handleSetFile', { handle: gs.handle, reservation: reserved.reservation, encoding: 'json' }))).toBe('CACHE_LOCK_NOT_HELD');
    expect(codeOf(await other.request('cache/handleSetFile', { handle: gs.handle, reservation: reserved.reservation, encoding: 'json' }))).toBe('CACHE_FILE_REFUSED');
    other.send({ jsonrpc: '2.0', method: 'cache/release', params: { handle: gs.handle } });
    const read = (await owner.request('cache/get', { scope: [], id: 'x' })).result as { handle: number; item: { value: string } };
    expect(Buffer.from(read.item.value, 'base64').toString()).toBe('"old"');
    owner.send({ jsonrpc: '2.0', method: 'cache/release', params: { handle: read.handle } });
    // The owner commits it, once; a second commit of the spent number is refused.
    expect(codeOf(await set(owner, reserved.reservation))).toBeNull();
    expect(codeOf(await set(owner, reserved.reservation))).toBe('CACHE_FILE_REFUSED');
    const after = (await other.request('cache/get', { scope: [], id: 'x' })).result as { item: { value: string } };
    expect(Buffer.from(after.item.value, 'base64').toString()).toBe('"new"');
  });

  test('a connection has at most 256 reservations open, and they are removed when it closes', async () => {
    const { socketPath, dataDir } = await startTestDaemon();
    const raw = await RawClient.open(socketPath);
    await raw.initialize();
    for (let n = 0; n < 256; n++) expect(codeOf(await raw.request('cache/reserveFile'))).toMatchObject({ path: null });
    expect(codeOf(await raw.request('cache/reserveFile'))).toBe('CACHE_FILE_REFUSED');
    expect(await tempFiles(dataDir)).toHaveLength(256);
    raw.socket.end();
    await raw.closed;
    const cache = await connect({ socketPath, autoStart: false });
    onTestFinished(() => cache.close());
    // The session's end is handled before this connection's status: its files are gone by then.
    for (let tries = 0; (await tempFiles(dataDir)).length > 0 && tries < 2000; tries++) await cache.status();
    expect(await tempFiles(dataDir)).toEqual([]);
  });

  test("a path of the daemon's that this client did not reserve is a TypeError: it cannot even be named", async () => {
    const { socketPath } = await startTestDaemon();
    const first = await connect({ socketPath, autoStart: false });
    const second = await connect({ socketPath, autoStart: false });
    onTestFinished(async () => void (await Promise.all([first.close(), second.close()])));
    await using reserved = await first.reserveFile();
    await writeFile(reserved.path, '"theirs"');
    await expect(second.setFile('x', reserved.path)).rejects.toBeInstanceOf(TypeError);
    await expect(second.setFile('x', join(reserved.path, '..', 'other'))).rejects.toBeInstanceOf(TypeError);
    await using got = await second.get('x');
    expect(got.item).toBeNull();
  });
});
