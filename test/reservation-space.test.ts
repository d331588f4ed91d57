import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, onTestFinished, test } from 'vitest';
import { connect } from '../client/index.js';
import { startDaemon } from '../daemon/index.js';
import { eventually } from './conformance/support.js';
import { RawClient } from './support/raw-client.js';
import { tempDir } from './support/temp-dir.js';

const MiB = 1024 * 1024;

/** `size` bytes of a pattern that repeats every 251 bytes. */
function pattern(size: number, seed = 0): Uint8Array {
  const period = new Uint8Array(251).map((_, n) => (n * 31 + seed) % 251);
  return new Uint8Array(Buffer.alloc(size).fill(period));
}

/** A daemon in this process on a fresh data directory, stopped when the test ends. */
async function daemonWith(options: { maxMessageBytes?: number; maxSizeBytes?: number }): Promise<{ socketPath: string; dataDir: string }> {
  const dataDir = join(await tempDir('rs-'), 'data');
  const socketPath = join(await tempDir('rs-'), 's.sock');
  const daemon = await startDaemon({ socketPath, dataDir, idleTimeoutMs: 0, log: () => {}, ...options });
  onTestFinished(() => daemon.close());
  return { socketPath, dataDir };
}

function errorCode(answer: unknown): unknown {
  return (answer as { error?: { data?: { code?: unknown } } }).error?.data?.code;
}

async function tempFiles(dataDir: string): Promise<string[]> {
  return readdir(join(dataDir, 'temp')).catch(() => []);
}

describe('a commit refused after its upload', () => {
  for (const references of [true, false]) {
    test(`leaves no reservation in the daemon's temp/ while the connection stays open (references ${references})`, async () => {
      // Over the message limit, so set goes by reservation; a value over the size limit is refused at its commit
      // (with references the client writes the daemon's file itself, so only the commit can refuse it).
      const { socketPath, dataDir } = await daemonWith({ maxMessageBytes: MiB, maxSizeBytes: 2 * MiB });
      const cache = await connect<Uint8Array>({ socketPath, autoStart: false, codec: 'binary', references });
      onTestFinished(() => cache.close());
      await expect(cache.set('big', pattern(3 * MiB))).rejects.toMatchObject({ code: 'CACHE_OVER_SIZE_LIMIT' });
      const gs = await cache.getset('big');
      await expect(gs.set(pattern(3 * MiB))).rejects.toMatchObject({ code: 'CACHE_OVER_SIZE_LIMIT' });
      await gs.release();
      // A private reservation sent in chunks (no references) or the daemon's own (references), refused at commit.
      const file = await cache.reserveFile();
      const { writeFile } = await import('node:fs/promises');
      await writeFile(file.path, pattern(3 * MiB));
      await expect(cache.setFile('big', file.path)).rejects.toMatchObject({ code: 'CACHE_OVER_SIZE_LIMIT' });
      // The caller's own reservation stays usable (documented); the daemon's upload reservations are gone.
      const expected = references ? 1 : 0;
      expect(await tempFiles(dataDir)).toHaveLength(expected);
      await file[Symbol.asyncDispose]();
      expect(await tempFiles(dataDir)).toHaveLength(0);
      // The daemon serves on.
      await cache.set('small', pattern(10));
      await using got = await cache.get('small');
      expect(Buffer.from(await got.item!.value()).equals(pattern(10))).toBe(true);
    });
  }
});

describe('open reservations count toward --max-size', () => {
  test('chunks appended to an open reservation make eviction room for them, and appends past the limit are refused', async () => {
    const { socketPath } = await daemonWith({ maxSizeBytes: 4 * MiB });
    const cache = await connect<Uint8Array>({ socketPath, autoStart: false, codec: 'binary', references: false });
    onTestFinished(() => cache.close());
    for (const id of ['a', 'b', 'c']) await cache.set(id, pattern(MiB - 4096));
    expect((await cache.status()).evictions).toBe(0);
    // A client in the middle of an upload: 2 MiB appended, not committed.
    const raw = await RawClient.open(socketPath);
    await raw.request('initialize', { clientName: 'uploader', protocolVersion: 2, chunks: true });
    const chunk = Buffer.alloc(512 * 1024, 9).toString('base64');
    const append = async (reservation: number, chunks: number, from = 0): Promise<unknown[]> => {
      const codes = [];
      for (let n = from; n < from + chunks; n++) codes.push(errorCode(await raw.request('cache/writeChunk', { reservation, offsetBytes: n * 512 * 1024, value: chunk })));
      return codes;
    };
    const first = ((await raw.request('cache/reserveFile', {})) as { result: { reservation: number } }).result.reservation;
    expect(await append(first, 4)).toEqual([undefined, undefined, undefined, undefined]);
    // Items and the reservation together would pass 4 MiB: the least recently used items go.
    await eventually(async () => (await cache.status()).evictions > 0, 'an eviction makes room for the open reservation');
    const status = await cache.status();
    expect(status.sizeBytes + 2 * MiB).toBeLessThanOrEqual(4 * MiB);
    expect(status.reservedBytes).toBe(2 * MiB);
    // Eviction cannot free reservations: a second one that would take them past the limit is refused at that chunk.
    const second = ((await raw.request('cache/reserveFile', {})) as { result: { reservation: number } }).result.reservation;
    expect(await append(second, 5)).toEqual([undefined, undefined, undefined, undefined, 'CACHE_OVER_SIZE_LIMIT']);
    // Discarded, its bytes no longer count: the same chunk goes in now.
    await raw.request('cache/discardFile', { reservation: first });
    expect(await append(second, 1, 4)).toEqual([undefined]);
    expect((await cache.status()).reservedBytes).toBe(2.5 * MiB);
  });

  test('a file a worker writes into a reservation is counted by a stat at housekeeping (gc), and eviction makes room', async () => {
    const { socketPath } = await daemonWith({ maxSizeBytes: 4 * MiB });
    const cache = await connect<Uint8Array>({ socketPath, autoStart: false, codec: 'binary', references: true });
    onTestFinished(() => cache.close());
    for (const id of ['a', 'b', 'c']) await cache.set(id, pattern(MiB - 4096));
    await using file = await cache.reserveFile();
    const { writeFile } = await import('node:fs/promises');
    await writeFile(file.path, pattern(2 * MiB));
    const report = await cache.gc();
    expect(report.evictedItems).toBeGreaterThan(0);
    expect((await cache.status()).sizeBytes + 2 * MiB).toBeLessThanOrEqual(4 * MiB);
  });
});
