import { readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { expect, test } from 'vitest';
import { connect } from '../client/index.js';
import { LevelCache } from '../src/index.js';
import { startDaemonProcess } from './support/processes.js';
import { tempDir } from './support/temp-dir.js';

const IDS = 8;

/** Value `n`: its number in the first 4 bytes, then byte `n & 0xff`; a large one (a file of its own) or a small one. */
function valueOf(n: number): Buffer {
  const bytes = Buffer.alloc(n % 2 === 0 ? 40_000 + (n % 13) : 100 + (n % 13), n & 0xff);
  bytes.writeUInt32BE(n, 0);
  return bytes;
}

/** The number of a value read back, after checking that it is whole. */
function numberOf(bytes: Uint8Array): number {
  const buffer = Buffer.from(bytes);
  const n = buffer.readUInt32BE(0);
  expect(buffer.equals(valueOf(n)), `value ${n} is whole`).toBe(true);
  return n;
}

test('20 SIGKILLs of the daemon during file commits and reads by reference: every acknowledged value stands, no orphan file, temp/ empty', async () => {
  const dir = await tempDir('hfc-');
  const socketPath = join(dir, 's.sock');
  const dataDir = join(dir, 'data');
  /** The last value acknowledged for each id. */
  const acknowledged = new Map<string, number>();
  let n = 0;
  let commits = 0;
  let referenceReads = 0;
  for (let kill = 0; kill < 20; kill++) {
    const daemon = await startDaemonProcess({ socketPath, dataDir });
    const cache = await connect<Uint8Array>({ socketPath, autoStart: false, codec: 'binary' });
    // Every value acknowledged before the last kill reads back whole, as it was or later.
    for (const [id, last] of acknowledged) {
      await using got = await cache.get(id);
      expect(numberOf(await got.item!.value()), `${id} after kill ${kill}`).toBeGreaterThanOrEqual(last);
    }
    let roundAcks = 0;
    let enough!: () => void;
    const started = new Promise<void>((resolve) => (enough = resolve));
    // Commits (by setFile and through getset handles) and reads by reference, until the kill cuts the connection.
    const work = (async () => {
      for (;;) {
        const mine = n++;
        const id = `k${mine % IDS}`;
        await using reserved = await cache.reserveFile();
        await writeFile(reserved.path, valueOf(mine));
        if (mine % 3 === 0) {
          await using gs = await cache.getset(id);
          await gs.setFile(reserved.path);
        } else {
          await cache.setFile(id, reserved.path);
        }
        acknowledged.set(id, Math.max(acknowledged.get(id) ?? -1, mine));
        commits++;
        {
          await using got = await cache.get(`k${(mine * 5) % IDS}`);
          if (got.item) numberOf(await got.item.value());
        }
        if (++roundAcks === 4) enough();
      }
    })().catch((error: unknown) => error);
    await started;
    await new Promise((resolve) => setTimeout(resolve, Math.random() * 60));
    referenceReads = (await cache.status()).referenceReads;
    daemon.child.kill('SIGKILL');
    await daemon.exited;
    expect(await work).toMatchObject({ name: 'CacheError' });
    await cache.close();
  }
  // The next open sweeps temp/ and the files of commits the kill cut off; then nothing is left over.
  const cache = await LevelCache.open<Uint8Array>(dataDir, { codec: 'binary' });
  const report = await cache.verify();
  expect(report).toMatchObject({ orphanFiles: 0, strayEntries: 0, driftedScopes: [] });
  expect(await readdir(join(dataDir, 'temp'))).toEqual([]);
  for (const [id, last] of acknowledged) {
    await using got = await cache.get(id);
    expect(numberOf(await got.item!.value())).toBeGreaterThanOrEqual(last);
  }
  await cache.close();
  expect(referenceReads).toBeGreaterThan(0);
  console.log(`file commits acknowledged over 20 kills: ${commits}`);
});
