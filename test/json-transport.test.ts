import { describe, expect, onTestFinished, test } from 'vitest';
import { connect } from '../client/index.js';
import type { Cache } from '../src/index.js';
import { startTestDaemon } from './support/daemon.js';
import { RawClient } from './support/raw-client.js';

type Message = Record<string, unknown>;

function framed(body: Buffer): Buffer {
  return Buffer.concat([Buffer.from(`Content-Length: ${body.length}\r\n\r\n`), body]);
}

function message(body: unknown): Buffer {
  return framed(Buffer.from(JSON.stringify(body)));
}

/** Reads messages until `done` holds for the ones read so far, and returns them all. */
async function readUntil(raw: RawClient, done: (messages: Message[]) => boolean): Promise<Message[]> {
  const messages: Message[] = [];
  while (!done(messages)) messages.push(await raw.next());
  return messages;
}

const answered = (messages: Message[], ...ids: (number | string)[]): boolean => ids.every((id) => messages.some((m) => m.id === id));

/** A JSON body with raw bytes spliced in where `@` stands in `text`. */
function withBytes(text: string, bytes: number[]): Buffer {
  const [before, after] = text.split('@') as [string, string];
  return Buffer.concat([Buffer.from(before), Buffer.from(bytes), Buffer.from(after)]);
}

async function bystander(socketPath: string) {
  const cache = await connect<string>({ socketPath, autoStart: false });
  onTestFinished(() => cache.close());
  return cache;
}

describe('the JSON transport', () => {
  test('two requests with the same id in one read are both carried out and both answered', async () => {
    const { socketPath } = await startTestDaemon();
    const raw = await RawClient.open(socketPath);
    await raw.initialize();
    const value = Buffer.from('"v"').toString('base64');
    const set = (key: string): unknown => ({ jsonrpc: '2.0', id: 1, method: 'cache/set', params: { scope: [], id: key, encoding: 'json', value } });
    const get = (id: number, key: string): unknown => ({ jsonrpc: '2.0', id, method: 'cache/get', params: { scope: [], id: key } });
    // One write: the daemon reads both sets in one chunk. Each get queues behind its set's lock.
    raw.writeRaw(Buffer.concat([message(set('a')), message(set('b')), message(get(2, 'a')), message(get(3, 'b'))]));
    const messages = await readUntil(raw, (m) => answered(m, 2, 3));
    // A round trip after the gets: by then both sets, carried out before the gets were granted, have answered.
    raw.writeRaw(message({ jsonrpc: '2.0', id: 4, method: 'daemon/status' }));
    messages.push(...(await readUntil(raw, (m) => answered(m, 4))));
    expect(messages.filter((m) => m.id === 1)).toEqual([
      { jsonrpc: '2.0', id: 1, result: null },
      { jsonrpc: '2.0', id: 1, result: null },
    ]);
    for (const id of [2, 3]) expect(messages.find((m) => m.id === id)).toMatchObject({ result: { item: { encoding: 'json', value } } });
  });

  test('a request method sent as a notification is not carried out, takes no lock, and is logged', async () => {
    const { socketPath, logs } = await startTestDaemon();
    const observer = await bystander(socketPath);
    const raw = await RawClient.open(socketPath);
    await raw.initialize();
    const value = Buffer.from('"v"').toString('base64');
    raw.send({ jsonrpc: '2.0', method: 'cache/set', params: { scope: [], id: 'k', encoding: 'json', value } });
    raw.send({ jsonrpc: '2.0', method: 'cache/getset', params: { scope: [], id: 'k' } });
    raw.send({ jsonrpc: '2.0', method: 'cache/get', params: { scope: [], id: 'k' } });
    raw.send({ jsonrpc: '2.0', method: 'cache/set', params: { scope: [], id: 'k', encoding: 'json', value } });
    // Messages are handled in order: the answer to this request is the next message, so the notifications got none.
    expect(await raw.request('daemon/status')).toMatchObject({ id: 2, result: { locksHeld: 0, waiters: 0 } });
    await using got = await observer.get('k');
    expect(got.item).toBeNull();
    const refused = logs.filter((line) => line.includes('without an id'));
    // Logged once per method and connection, however often it is sent.
    expect(refused).toHaveLength(3);
    expect(refused.join('\n')).toMatch(/cache\/set.*not carried out/);
  });

  test('initialize sent as a notification does not initialize', async () => {
    const { socketPath } = await startTestDaemon();
    const raw = await RawClient.open(socketPath);
    raw.send({ jsonrpc: '2.0', method: 'initialize', params: { protocolVersion: 2 } });
    expect((await raw.request('cache/get', { scope: [], id: 'k' })).error).toMatchObject({ data: { code: 'CACHE_NOT_INITIALIZED' } });
  });

  test('cache/release sent as a request is carried out and answered', async () => {
    const { socketPath } = await startTestDaemon();
    const observer = await bystander(socketPath);
    const raw = await RawClient.open(socketPath);
    const early = await raw.request('cache/release', { handle: 1 });
    expect(early.error).toMatchObject({ data: { code: 'CACHE_NOT_INITIALIZED' } });
    await raw.initialize();
    const granted = await raw.request('cache/getset', { scope: [], id: 'k' });
    const { handle } = granted.result as { handle: number };
    expect((await observer.status()).locksHeld).toBe(1);
    expect(await raw.request('cache/release', { handle })).toMatchObject({ result: null });
    expect(await observer.status()).toMatchObject({ locksHeld: 0 });
    // Releasing it again, or a handle never issued, does nothing, as the notification does.
    expect(await raw.request('cache/release', { handle })).toMatchObject({ result: null });
    expect((await raw.request('cache/release', { handle: 'one' })).error).toMatchObject({ code: -32602, data: { code: 'CACHE_INVALID_PARAMS' } });
  });

  test('$/cancelRequest sent as a request cancels and is answered', async () => {
    const { socketPath } = await startTestDaemon();
    const holder = await bystander(socketPath);
    await using held = await holder.getset('k');
    const raw = await RawClient.open(socketPath);
    await raw.initialize();
    raw.send({ jsonrpc: '2.0', id: 'waits', method: 'cache/get', params: { scope: [], id: 'k' } });
    raw.send({ jsonrpc: '2.0', id: 'cancels', method: '$/cancelRequest', params: { id: 'waits' } });
    const messages = await readUntil(raw, (m) => answered(m, 'cancels'));
    expect(messages.find((m) => m.id === 'cancels')).toMatchObject({ result: null });
    messages.push(...(await readUntil(raw, (m) => answered(m, 'waits'))));
    expect(messages.find((m) => m.id === 'waits')).toMatchObject({ error: { code: -32800, data: { code: 'CACHE_CANCELLED' } } });
    expect(held.item).toBeNull();
  });

  test('exit sent as a request is answered, then the connection closes and its locks are released', async () => {
    const { socketPath } = await startTestDaemon();
    const observer = await bystander(socketPath);
    const raw = await RawClient.open(socketPath);
    await raw.initialize();
    await raw.request('cache/getset', { scope: [], id: 'k' });
    expect((await observer.status()).locksHeld).toBe(1);
    expect(await raw.request('exit')).toMatchObject({ result: null });
    await raw.closed;
    expect(await observer.status()).toMatchObject({ locksHeld: 0, connections: 1 });
  });

  test('invalid UTF-8 in an id, a scope name or anywhere in a body is refused with CACHE_INVALID_PARAMS', async () => {
    const { socketPath } = await startTestDaemon();
    const observer = await bystander(socketPath);
    const raw = await RawClient.open(socketPath);
    await raw.initialize();
    const value = Buffer.from('"v"').toString('base64');
    const sets = [
      // Two different invalid byte strings that a lenient decoder turns into the same id, "a\uFFFD".
      withBytes(`{"jsonrpc":"2.0","id":10,"method":"cache/set","params":{"scope":[],"id":"a@","encoding":"json","value":"${value}"}}`, [0xff]),
      withBytes(`{"jsonrpc":"2.0","id":11,"method":"cache/set","params":{"scope":[],"id":"a@","encoding":"json","value":"${value}"}}`, [0xc3]),
      withBytes(`{"jsonrpc":"2.0","id":12,"method":"cache/set","params":{"scope":["s@"],"id":"k","encoding":"json","value":"${value}"}}`, [0xed, 0xa0, 0x80]),
      withBytes(`{"jsonrpc":"2.0","id":13,"method":"cache/set","params":{"scope":[],"id":"k","encoding":"json","value":"${value}","note":"@"}}`, [0x80]),
      withBytes('{"jsonrpc":"2.0","method":"cache/release","params":{"handle":1},"note":"@"}', [0xfe]),
    ];
    for (const [n, body] of sets.entries()) {
      raw.writeRaw(framed(body));
      expect(await raw.next(), `body ${n}`).toMatchObject({ id: n < 4 ? 10 + n : null, error: { code: -32602, data: { code: 'CACHE_INVALID_PARAMS' } } });
    }
    for (const [scope, id] of [[[], 'a\uFFFD'], [['s\uFFFD'], 'k'], [[], 'k']] as const) {
      const view = scope.reduce<Cache<string>>((cache, name) => cache.withScope(name), observer);
      await using got = await view.get(id);
      expect(got.item, `${scope.join('/')} ${id}`).toBeNull();
    }
    // The connection goes on, and a proper replacement character is a character like any other.
    expect(await raw.request('cache/set', { scope: [], id: 'a\uFFFD', encoding: 'json', value })).toMatchObject({ result: null });
    await using got = await observer.get('a\uFFFD');
    expect(await got.item!.value()).toBe('v');
  });
});
