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
  return JSON.parse((await client.call(Status, requestId)).string()) as { waiters: number; locksHeld: number; connections: number };
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
    const frames = Array.from({ length: limit + 1 }, (_, n) => frame(Get, n + 1, [['strings', []], ['string', 'k']]));
    // Requests that do not wait are served as before: a read of a free item, a getset that does not wait.
    frames.push(frame(Get, limit + 2, [['strings', []], ['string', 'free']]));
    frames.push(frame(GetSet, limit + 3, [['strings', []], ['string', 'k'], ['u8', 0]]));
    // Status reads the disk, so it is answered after the others that do not wait.
    frames.push(frame(Status, limit + 4));
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
    client.write(Buffer.concat(granted.map((answer) => frame(Release, 0, [['u64', answer.u64()]]))));
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
