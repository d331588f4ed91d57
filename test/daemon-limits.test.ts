import { once } from 'node:events';
import { readFile, writeFile } from 'node:fs/promises';
import { connect as netConnect, type Socket } from 'node:net';
import { join } from 'node:path';
import { describe, expect, onTestFinished, test } from 'vitest';
import { connect } from '../client/index.js';
import { expectCode, track } from './conformance/support.js';
import { startDaemonProcess } from './support/processes.js';
import { type Answer, frame, RawBinaryClient } from './support/raw-binary-client.js';
import { tempDir } from './support/temp-dir.js';

// The ops as PROTOCOL.md gives them.
const [Get, GetSet, Release, Status] = [0x01, 0x02, 0x04, 0x08];
const Result = 0x80;

async function daemonProcess(extra: string[] = []) {
  const dir = await tempDir('hd-');
  return startDaemonProcess({ socketPath: join(dir, 's.sock'), dataDir: join(dir, 'data'), extra });
}

/** The next answers by request id, up to the one to `lastId` or `count` of them: answers ready at once overtake others. */
async function answers(client: RawBinaryClient, until: { lastId?: number; count?: number }): Promise<Map<number, Answer>> {
  const byId = new Map<number, Answer>();
  for (;;) {
    const answer = await client.next();
    byId.set(answer.requestId, answer);
    if (answer.requestId === until.lastId || byId.size === until.count) return byId;
  }
}

async function status(client: RawBinaryClient, requestId: number): Promise<{ waiters: number; locksHeld: number; connections: number }> {
  return JSON.parse((await client.call(Status, requestId, [['u8', 0]])).string()) as { waiters: number; locksHeld: number; connections: number };
}

describe('waiters per connection', () => {
  test('past 10,000 waiting requests, a connection\u2019s request that would wait is refused with CACHE_TOO_MANY_WAITERS, and it and the daemon go on', async () => {
    const { socketPath } = await daemonProcess();
    const { client: holder } = await RawBinaryClient.open(socketPath);
    const held = await holder.call(GetSet, 1, [['strings', []], ['string', 'k'], ['u8', 1]]);
    expect(held.u8()).toBe(1);
    const handle = held.u64();

    const { client } = await RawBinaryClient.open(socketPath);
    const limit = 10_000;
    const frames = Array.from({ length: limit + 1 }, (_, n) => frame(Get, n + 1, [['strings', []], ['string', 'k'], ['u8', 1]]));
    // Requests that do not wait are served as before: a read of a free item, a getset that does not wait.
    frames.push(frame(Get, limit + 2, [['strings', []], ['string', 'free'], ['u8', 1]]));
    frames.push(frame(GetSet, limit + 3, [['strings', []], ['string', 'k'], ['u8', 0]]));
    // Status reads the disk, so it is answered after the others that do not wait.
    frames.push(frame(Status, limit + 4, [['u8', 0]]));
    client.write(Buffer.concat(frames));
    const first = await answers(client, { lastId: limit + 4 });
    expect(JSON.parse(first.get(limit + 4)!.string())).toMatchObject({ waiters: limit, locksHeld: 2 });
    expect(first.get(limit + 1)?.errorCode).toBe('CACHE_TOO_MANY_WAITERS');
    expect(first.get(limit + 2)?.op).toBe(Result);
    expect(first.get(limit + 3)?.u8()).toBe(0);

    // Another connection's requests wait as before.
    const other = await connect<string>({ socketPath, autoStart: false });
    onTestFinished(() => other.close());
    const otherGet = track(other.get('k'));
    while ((await status(holder, 2)).waiters < limit + 1) await new Promise((resolve) => setImmediate(resolve));

    holder.write(frame(Release, 0, [['u64', handle]]));
    const granted = [...(await answers(client, { count: limit })).values()];
    expect(granted.every((answer) => answer.op === Result)).toBe(true);
    await (await otherGet.promise).release();
    const handles = granted.map((answer) => {
      expect(answer.u8()).toBe(1);
      return answer.u64();
    });
    client.write(Buffer.concat(handles.map((number) => frame(Release, 0, [['u64', number]]))));
    // Its waits ended, the connection may wait again.
    const again = await client.call(GetSet, limit + 5, [['strings', []], ['string', 'k'], ['u8', 1]]);
    expect([again.op, again.u8()]).toEqual([Result, 1]);
    expect(await status(holder, 3)).toMatchObject({ waiters: 0, locksHeld: 2 });
  });

  test('--max-waiters sets the limit, which counts every request that waits, and a client gets the refusal as a CacheError', async () => {
    const { socketPath } = await daemonProcess(['--max-waiters', '3']);
    const holder = await connect<string>({ socketPath, autoStart: false });
    onTestFinished(() => holder.close());
    const held = await holder.getset('k');
    for (const transport of ['json', 'binary'] as const) {
      const cache = await connect<string>({ socketPath, autoStart: false, transport });
      onTestFinished(() => cache.close());
      const waits = [track(cache.get('k')), track(cache.set('k', transport)), track(cache.clear())];
      while ((await holder.status()).waiters < 3) await new Promise((resolve) => setImmediate(resolve));
      await expectCode(cache.get('k'), 'CACHE_TOO_MANY_WAITERS');
      await expectCode(cache.getset('k'), 'CACHE_TOO_MANY_WAITERS');
      await expectCode(cache.delete('k'), 'CACHE_TOO_MANY_WAITERS');
      // Closing the connection drops its waits, and the daemon serves the next one.
      await cache.close();
      await Promise.allSettled(waits.map((wait) => wait.promise));
      while ((await holder.status()).waiters > 0) await new Promise((resolve) => setImmediate(resolve));
    }
    await held.release();
  });
});

describe('waiting clears', () => {
  test('past 64 waiting clears, a connection\u2019s next clear is refused with CACHE_TOO_MANY_WAITERS; other connections clear as before', async () => {
    // Before, the 65th (and the 10,000th) clear queued too: each waits for every earlier one, so 10,000 took 17 s.
    const { socketPath } = await daemonProcess();
    const holder = await connect<string>({ socketPath, autoStart: false });
    onTestFinished(() => holder.close());
    const held = await holder.getset('k');
    const cache = await connect<string>({ socketPath, autoStart: false });
    onTestFinished(() => cache.close());
    const clears = Array.from({ length: 64 }, () => track(cache.clear()));
    while ((await holder.status()).waiters < 64) await new Promise((resolve) => setImmediate(resolve));
    await expectCode(cache.clear(), 'CACHE_TOO_MANY_WAITERS');
    // It may still wait for items, and another connection may still clear.
    const get = track(cache.get('k'));
    const other = await connect<string>({ socketPath, autoStart: false });
    onTestFinished(() => other.close());
    const otherClear = track(other.clear());
    while ((await holder.status()).waiters < 66) await new Promise((resolve) => setImmediate(resolve));
    await held.release();
    await (await get.promise).release();
    await Promise.all(clears.map((clear) => clear.promise));
    await otherClear.promise;
    // Once its clears have ended, the connection may clear again.
    await cache.clear();
  });
});

test('startDaemon refuses a maxWaitersPerConnection that is not a whole number of at least 1', async () => {
  const { startDaemon } = await import('../daemon/index.js');
  for (const bad of [0, -1, 1.5, Number.NaN]) {
    await expect(startDaemon({ maxWaitersPerConnection: bad, socketPath: '/nonexistent/s.sock', log: () => {} })).rejects.toThrow(TypeError);
  }
});

/** A figure from the process's `/proc/<pid>/status`, in bytes. */
async function memory(pid: number, field: 'VmRSS' | 'VmHWM'): Promise<number> {
  const text = await readFile(`/proc/${pid}/status`, 'utf8');
  return Number(new RegExp(`${field}:\\s+(\\d+) kB`).exec(text)![1]) * 1024;
}

/**
 * A client that sends requests in either transport and counts the answers, skipping their bytes as they come, so
 * that it can take many large answers without keeping them.
 */
class CountingClient {
  answered = 0;
  #header = Buffer.alloc(0);
  #skip = 0;
  #lsp = true;
  #waiting: { count: number; resolve: () => void }[] = [];

  private constructor(
    readonly socket: Socket,
    readonly transport: 'json' | 'binary',
  ) {
    socket.on('data', (chunk: Buffer) => this.#take(chunk));
  }

  static async open(socketPath: string, transport: 'json' | 'binary'): Promise<CountingClient> {
    const socket = netConnect(socketPath);
    await once(socket, 'connect');
    onTestFinished(() => void socket.destroy());
    const client = new CountingClient(socket, transport);
    const params = { clientName: 'counting client', pid: process.pid, protocolVersion: 2, transports: transport === 'binary' ? ['binary'] : [] };
    socket.write(lsp({ jsonrpc: '2.0', id: 0, method: 'initialize', params }));
    await client.until(1);
    return client;
  }

  get(requestId: number, id: string): void {
    if (this.transport === 'binary') this.socket.write(frame(Get, requestId, [['strings', []], ['string', id], ['u8', 1]]));
    else this.socket.write(lsp({ jsonrpc: '2.0', id: requestId, method: 'cache/get', params: { scope: [], id } }));
  }

  /** Resolves once `count` answers (the handshake's included) have arrived whole. */
  until(count: number): Promise<void> {
    if (this.answered >= count) return Promise.resolve();
    return new Promise((resolve) => this.#waiting.push({ count, resolve }));
  }

  #take(chunk: Buffer): void {
    while (chunk.length > 0) {
      if (this.#skip > 0) {
        const skipped = Math.min(this.#skip, chunk.length);
        this.#skip -= skipped;
        chunk = chunk.subarray(skipped);
        if (this.#skip === 0) this.#answered();
        continue;
      }
      // A header: LSP's text up to a blank line, or a frame's u32 length (which counts the rest of the frame).
      this.#header = Buffer.concat([this.#header, chunk]);
      chunk = Buffer.alloc(0);
      if (this.#lsp) {
        const end = this.#header.indexOf('\r\n\r\n');
        if (end < 0) return;
        this.#skip = Number(/Content-Length: (\d+)/i.exec(this.#header.subarray(0, end).toString())![1]);
        chunk = this.#header.subarray(end + 4);
      } else {
        if (this.#header.length < 4) return;
        this.#skip = this.#header.readUInt32LE(0);
        chunk = this.#header.subarray(4);
      }
      this.#header = Buffer.alloc(0);
    }
  }

  #answered(): void {
    this.answered++;
    if (this.answered === 1 && this.transport === 'binary') this.#lsp = false;
    for (const waiter of this.#waiting.filter((w) => w.count <= this.answered)) {
      this.#waiting.splice(this.#waiting.indexOf(waiter), 1);
      waiter.resolve();
    }
  }
}

function lsp(message: unknown): Buffer {
  const body = Buffer.from(JSON.stringify(message));
  return Buffer.concat([Buffer.from(`Content-Length: ${body.length}\r\n\r\n`), body]);
}

describe('values in flight', () => {
  const MiB = 1024 * 1024;
  const readers = 64;

  /**
   * Queues `readers` reads of a value of `valueBytes` behind a getset over `connections` connections, then releases
   * it and returns how far the daemon's peak memory rose above its resident memory at the release, in bytes.
   */
  async function peakGrowthOnRelease(options: { transport: 'json' | 'binary'; connections: number; valueBytes: number }): Promise<number> {
    const { transport, connections, valueBytes } = options;
    const { socketPath, child } = await daemonProcess();
    const holder = await connect<Uint8Array>({ socketPath, autoStart: false, codec: 'binary' });
    onTestFinished(() => holder.close());
    await holder.set('big', new Uint8Array(valueBytes).fill(7));
    const held = await holder.getset('big');
    const clients = await Promise.all(Array.from({ length: connections }, () => CountingClient.open(socketPath, transport)));
    for (let n = 0; n < readers; n++) clients[n % connections]!.get(n + 1, 'big');
    while ((await holder.status()).waiters < readers) await new Promise((resolve) => setImmediate(resolve));
    // Writing 5 resets the peak (VmHWM) to the present resident size.
    await writeFile(`/proc/${child.pid}/clear_refs`, '5');
    const before = await memory(child.pid!, 'VmRSS');
    await held.release();
    await Promise.all(clients.map((client, n) => client.until(1 + Math.ceil((readers - n) / connections))));
    return (await memory(child.pid!, 'VmHWM')) - before;
  }

  test('readers granted together share one copy of a large value in the binary transport', async () => {
    // Before, each read its own copy: 64 readers of 20 MiB raised the peak by 1.2 GiB; now by less than 1 MiB.
    expect(await peakGrowthOnRelease({ transport: 'binary', connections: 8, valueBytes: 20 * MiB })).toBeLessThan(4 * 20 * MiB);
  });

  test('in JSON they share one base64 form of the value, written into each answer without a copy', async () => {
    // Before, each answer carried a base64 string of its own: 64 of an 8 MiB value raised the peak by 1.2 GiB (3.1 GiB
    // for 20 MiB). Now: the value, its base64 string and that string's bytes, which every answer's body shares, with
    // garbage not yet collected: about 6 times the value (45 MiB), whatever the number of readers.
    expect(await peakGrowthOnRelease({ transport: 'json', connections: 1, valueBytes: 8 * MiB })).toBeLessThan(12 * 8 * MiB);
  });
});
