import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { expect, onTestFinished, test } from 'vitest';
import { connect } from '../client/index.js';
import { startDaemon } from '../daemon/index.js';
import { eventually } from './conformance/support.js';
import { tempDir } from './support/temp-dir.js';

/**
 * A RemoteCache keeps calls in the order they were made while a set goes by reservation (several round trips:
 * client/call-order.ts): calls on that item wait behind it, calls on other items are neither held up nor reordered,
 * and a call that would not wait (or is aborted) does not wait for it.
 */

const MiB = 1024 * 1024;

/** A daemon in this process whose message limit (1 MiB) sends a 3 MiB value by reservation. */
async function daemonOn(options: { maxMessageBytes?: number; maxSizeBytes?: number } = {}): Promise<string> {
  const dataDir = join(await tempDir('hco-'), 'data');
  const socketPath = join(await tempDir('hco-'), 's.sock');
  const daemon = await startDaemon({ socketPath, dataDir, idleTimeoutMs: 0, log: () => {}, ...options });
  onTestFinished(() => daemon.close());
  return socketPath;
}

for (const references of [true, false]) {
  test(`a get then a set of an item, while another item's upload is in flight, keep their order (references ${references})'s value`, async () => {
    const socketPath = await daemonOn({ maxMessageBytes: MiB });
    const cache = await connect<string>({ socketPath, autoStart: false, codec: 'json', references });
    onTestFinished(() => cache.close());
    await cache.set('b', 'v1');
    // Control: with nothing in flight, the get made first sees v1.
    const control = cache.get('b').then(async (h) => { const v = await h.item?.value(); await h.release(); return v; });
    const controlSet = cache.set('b', 'v1b');
    expect(await control).toBe('v1');
    await controlSet;
    await cache.set('b', 'v1');
    const upload = cache.set('x', 'L'.repeat(3 * MiB));
    const seen = cache.get('b').then(async (h) => { const v = await h.item?.value(); await h.release(); return v; });
    const second = cache.set('b', 'v2');
    const result = await seen;
    await Promise.all([upload, second]);
    expect(result, 'the get was made before the set of v2').toBe('v1');
  });

  test(`a delete then a set of an item, while another item's upload is in flight, keep their order (references ${references})`, async () => {
    const socketPath = await daemonOn({ maxMessageBytes: MiB });
    const cache = await connect<string>({ socketPath, autoStart: false, codec: 'json', references });
    onTestFinished(() => cache.close());
    await cache.set('b', 'v1');
    const upload = cache.set('x', 'L'.repeat(3 * MiB));
    const deletion = cache.delete('b');
    const second = cache.set('b', 'v2');
    await Promise.all([upload, deletion, second]);
    const got = await cache.get('b');
    const value = await got.item?.value();
    await got.release();
    expect(value, 'the set of v2 was made after the delete').toBe('v2');
  });

  test(`a clear of a scope then a set in it, while another scope's upload is in flight, keep their order (references ${references})`, async () => {
    const socketPath = await daemonOn({ maxMessageBytes: MiB });
    const cache = await connect<string>({ socketPath, autoStart: false, codec: 'json', references });
    onTestFinished(() => cache.close());
    const s = cache.withScope('s');
    await s.set('z', 'old');
    const upload = cache.set('x', 'L'.repeat(3 * MiB));
    const clearing = s.clear();
    const setting = s.set('z', 'new');
    await Promise.all([upload, clearing, setting]);
    const got = await s.get('z');
    const value = await got.item?.value();
    await got.release();
    expect(value, 'the set was made after the clear').toBe('new');
  });

  test(`calls behind a set by reservation that is refused still run, in order (references ${references})`, async () => {
    const socketPath = await daemonOn({ maxMessageBytes: MiB, maxSizeBytes: 2 * MiB });
    const cache = await connect<string>({ socketPath, autoStart: false, codec: 'json', references });
    onTestFinished(() => cache.close());
    await cache.set('x', 'old');
    const upload = cache.set('x', 'L'.repeat(3 * MiB)).then(() => 'stored', (e: { code?: string }) => String(e.code));
    const seen = cache.get('x').then(async (h) => { const v = await h.item?.value(); await h.release(); return v; });
    const cleared = cache.clear().then(() => 'cleared');
    const after = cache.set('x', 'after');
    expect(await upload).toBe('CACHE_OVER_SIZE_LIMIT');
    expect(await seen).toBe('old');
    expect(await cleared).toBe('cleared');
    await after;
    const got = await cache.get('x');
    expect(await got.item?.value()).toBe('after');
    await got.release();
  });

  test(`a get queued behind an upload of its item rejects as soon as its signal aborts, before the upload ends (references ${references})`, async () => {
    const socketPath = await daemonOn({ maxMessageBytes: MiB });
    const cache = await connect<string>({ socketPath, autoStart: false, codec: 'json', references });
    onTestFinished(() => cache.close());
    let uploaded = false;
    const upload = cache.set('x', 'L'.repeat(64 * MiB)).then(() => (uploaded = true));
    const controller = new AbortController();
    const seen = cache.get('x', { signal: controller.signal }).then(
      async (h) => { await h.release(); return 'granted'; },
      (e: unknown) => `rejected ${String(e)}`,
    );
    controller.abort(new Error('aborted'));
    const outcome = await seen;
    const uploadedWhenSettled = uploaded;
    await upload;
    expect({ outcome, uploadedWhenSettled }).toEqual({ outcome: 'rejected Error: aborted', uploadedWhenSettled: false });
  });
}

for (const size of [10, 3 * MiB]) {
  test(`a get and a getset with wait false, made after a set of the item that waits for this process's getset lock, answer at once (value of ${size} bytes)`, async () => {
    const socketPath = await daemonOn({ maxMessageBytes: MiB });
    const cache = await connect<string>({ socketPath, autoStart: false, codec: 'json', references: true });
    onTestFinished(() => cache.close());
    const held = await cache.getset('x');
    const setting = cache.set('x', 'L'.repeat(size));
    const now = cache.get('x', { wait: false }).then((h) => (h === null ? 'null' : 'granted'));
    const nowGetset = cache.getset('x', { wait: false }).then((h) => (h.set === null ? 'missed' : 'held'));
    const outcome = await Promise.race([Promise.all([now, nowGetset]), new Promise((r) => setTimeout(() => r('still waiting after 20 s'), 20_000))]);
    await held.release();
    await setting;
    expect(outcome).toEqual(['null', 'missed']);
  });
}

test('a setFile of a daemon reservation made after a set by reservation of its item, not awaited, stands', async () => {
  const socketPath = await daemonOn({ maxMessageBytes: MiB });
  const cache = await connect<string>({ socketPath, autoStart: false, codec: 'json', references: true });
  onTestFinished(() => cache.close());
  const reserved = await cache.reserveFile();
  await writeFile(reserved.path, JSON.stringify('from the file'));
  const upload = cache.set('x', 'L'.repeat(3 * MiB));
  const committed = cache.setFile('x', reserved.path);
  await Promise.all([upload, committed]);
  const got = await cache.get('x');
  const value = await got.item?.value();
  await got.release();
  expect(value?.slice(0, 20), 'the setFile was made after the large set').toBe('from the file');
});

test('calls made after a setFile of a private reservation in chunks, not awaited, reach the daemon after it', async () => {
  const socketPath = await daemonOn({ maxMessageBytes: MiB });
  const cache = await connect<string>({ socketPath, autoStart: false, codec: 'json', references: false });
  onTestFinished(() => cache.close());
  await cache.set('x', 'old');
  const reserved = await cache.reserveFile();
  await writeFile(reserved.path, JSON.stringify('F'.repeat(3 * MiB)));
  const committed = cache.setFile('x', reserved.path);
  const seen = cache.get('x').then(async (h) => { const v = await h.item?.value(); await h.release(); return v?.slice(0, 3); });
  const deletion = cache.delete('x');
  expect(await seen).toBe('FFF');
  await Promise.all([committed, deletion]);
  const got = await cache.get('x');
  expect(got.item).toBeNull();
  await got.release();
});

test('a setFile of a daemon reservation made after a small set of its item, not awaited, stands', async () => {
  const socketPath = await daemonOn({ maxMessageBytes: MiB });
  const cache = await connect<string>({ socketPath, autoStart: false, codec: 'json', references: true });
  onTestFinished(() => cache.close());
  const reserved = await cache.reserveFile();
  await writeFile(reserved.path, JSON.stringify('from the file'));
  const setting = cache.set('x', 'small');
  const committed = cache.setFile('x', reserved.path);
  await Promise.all([setting, committed]);
  const got = await cache.get('x');
  const value = await got.item?.value();
  await got.release();
  expect(value, 'the setFile was made after the set').toBe('from the file');
});

test('a get with wait false behind a queued reader only (the large write ahead of both answered) is granted: a reader ahead is no writer', async () => {
  const socketPath = await daemonOn({ maxMessageBytes: MiB });
  const cache = await connect<string>({ socketPath, autoStart: false, codec: 'json', references: false });
  onTestFinished(() => cache.close());
  const upload = cache.set('x', 'L'.repeat(3 * MiB));
  const reader = cache.get('x');
  await upload;
  const quick = await cache.get('x', { wait: false });
  const held = await reader;
  expect((await held.item?.value())?.length).toBe(3 * MiB);
  await held.release();
  // Before: `null`, as if a writer held or waited for the item.
  expect(quick).not.toBeNull();
  expect((await quick!.item?.value())?.length).toBe(3 * MiB);
  await quick!.release();
});

test("a get with wait false behind a queued reader that another connection's writer holds up answers at once", async () => {
  const socketPath = await daemonOn({ maxMessageBytes: MiB });
  const options = { socketPath, autoStart: false, codec: 'json' as const, references: false };
  const [a, b, c] = await Promise.all([connect<string>(options), connect<string>(options), connect<string>(options)]);
  onTestFinished(async () => void (await Promise.all([a, b, c].map((cache) => cache.close()))));
  const waitersOnX = async (): Promise<number> => (await c.locks()).filter((lock) => lock.id === 'x' && lock.state === 'waiting').length;
  const heldByC = await c.getset('x');
  const upload = a.set('x', 'L'.repeat(3 * MiB));
  // A's reader is kept in order behind A's upload.
  const reader = a.get('x');
  await eventually(async () => (await waitersOnX()) === 1, "A's commit waits for C's lock");
  const heldByB = b.getset('x');
  await eventually(async () => (await waitersOnX()) === 2, "B's getset waits behind it");
  await heldByC.release();
  await upload;
  const held = await heldByB;
  // A's reader now waits at the daemon for B's lock; a get that would not wait does not wait behind it.
  await eventually(async () => (await waitersOnX()) === 1, "A's reader waits for B's lock");
  const quick = await Promise.race([a.get('x', { wait: false }).then((got) => (got === null ? 'null' : 'granted')), delay(20_000, 'still waiting after 20 s')]);
  await held.release();
  await (await reader).release();
  // Before: it waited in order behind A's reader, until B released.
  expect(quick).toBe('null');
});
