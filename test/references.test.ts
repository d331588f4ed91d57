import { execFile, execFileSync } from 'node:child_process';
import { pbkdf2 } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { chown, copyFile, readdir, stat, symlink, truncate, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, onTestFinished, test } from 'vitest';
import { daemonEntry } from '../client/connect.js';
import { connect, type RemoteCache } from '../client/index.js';
import type { CodecName } from '../src/index.js';
import { eventually, expectCode } from './conformance/support.js';
import { startTestDaemon } from './support/daemon.js';
import { frame, RawBinaryClient } from './support/raw-binary-client.js';
import { RawClient } from './support/raw-client.js';
import { PROJECT_ROOT } from './support/child.js';
import { tempDir } from './support/temp-dir.js';

async function open<T>(socketPath: string, options: { codec?: CodecName; references?: boolean; transport?: 'json' | 'binary' } = {}): Promise<RemoteCache<T>> {
  const cache = await connect<T>({ socketPath, autoStart: false, ...options });
  onTestFinished(() => cache.close());
  return cache;
}

async function referenceReads(cache: RemoteCache<unknown>): Promise<number> {
  return (await cache.status()).referenceReads;
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}

/** The values files in the daemon's data directory, as `subdirectory/file`. */
async function valueFiles(dataDir: string): Promise<string[]> {
  const blobs = join(dataDir, 'blobs');
  const names: string[] = [];
  for (const sub of await readdir(blobs).catch(() => [])) for (const file of await readdir(join(blobs, sub))) names.push(`${sub}/${file}`);
  return names;
}

/** `toEqual`, with byte arrays compared in one step (element by element, 200 KB take seconds). */
function expectSame(actual: unknown, expected: unknown): void {
  if (expected instanceof Uint8Array) {
    expect(actual).toBeInstanceOf(Uint8Array);
    expect(Buffer.from(actual as Uint8Array).equals(expected)).toBe(true);
  } else {
    expect(actual).toEqual(expected);
  }
}

const LARGE: Record<CodecName, () => unknown> = {
  json: () => ({ text: 'x'.repeat(100_000), list: [1, 2, 3] }),
  binary: () => new Uint8Array(200_000).map((_, n) => n % 251),
  structured: () => new Map<string, unknown>([['big', 'y'.repeat(100_000)], ['when', new Date(5)]]),
};

describe('values read by reference', () => {
  for (const transport of ['binary', 'json'] as const) {
    test(`equal the values read by bytes, for every codec, and status counts them (${transport} transport)`, async () => {
      const { socketPath } = await startTestDaemon();
      for (const codec of ['json', 'binary', 'structured'] as CodecName[]) {
        const byReference = await open<unknown>(socketPath, { codec, transport });
        const byBytes = await open<unknown>(socketPath, { codec, transport, references: false });
        const value = LARGE[codec]();
        await byBytes.set('large', value);
        await byBytes.set('small', codec === 'binary' ? new Uint8Array([1, 2]) : 'small');
        const before = await referenceReads(byReference);
        const read = async (cache: RemoteCache<unknown>, id: string): Promise<unknown> => {
          await using got = await cache.get(id);
          return await got.item!.value();
        };
        expectSame(await read(byBytes, 'large'), value);
        expect(await referenceReads(byReference)).toBe(before);
        expectSame(await read(byReference, 'large'), value);
        expect(await referenceReads(byReference)).toBe(before + 1);
        // Small values stay inline.
        expect(await read(byReference, 'small')).toEqual(await read(byBytes, 'small'));
        expect(await referenceReads(byReference)).toBe(before + 1);
        // A getset's item, then its stale item, by reference.
        {
          await using gs = await byReference.getset('large');
          expectSame(await gs.item!.value(), value);
          await gs.set(value, { ttlMs: 1, staleMs: 60_000 });
        }
        const expiredAt = Date.now() + 2;
        while (Date.now() <= expiredAt) await new Promise((resolve) => setTimeout(resolve, 1));
        await using gs = await byReference.getset('large');
        expect(gs.item).toBeNull();
        expectSame(await gs.stale!.value(), value);
        expect(await referenceReads(byReference)).toBe(before + 3);
      }
    });
  }

  test('a value read by reference stays readable after release (its bytes were read under the lock)', async () => {
    const { socketPath } = await startTestDaemon();
    const cache = await open<Uint8Array>(socketPath, { codec: 'binary' });
    await cache.set('id', new Uint8Array(3 << 20).fill(7));
    const got = await cache.get('id');
    await got.release();
    await cache.delete('id');
    const bytes = await got.item!.value();
    expect(bytes.byteLength).toBe(3 << 20);
    expect(bytes.every((byte) => byte === 7)).toBe(true);
    expect(await referenceReads(cache as RemoteCache<unknown>)).toBe(1);
  });

  test('a value over 16 MiB read by reference is not read at grant: its path is the daemon\u2019s file, its value read when asked while held', async () => {
    const { socketPath, dataDir } = await startTestDaemon();
    const cache = await open<Uint8Array>(socketPath, { codec: 'binary' });
    const size = 48 << 20;
    await cache.set('big', new Uint8Array(size).fill(9));
    const got = await cache.get('big');
    const path = await got.item!.path();
    expect(path.startsWith(join(dataDir, 'blobs') + '/')).toBe(true);
    const bytes = await got.item!.value();
    expect(bytes.byteLength).toBe(size);
    expect(bytes[0] === 9 && bytes[size - 1] === 9).toBe(true);
    await got.release();
    // Read when asked, not at grant (before: read whole into this process at grant, so readable after release).
    expect(await got.item!.value().then(() => 'read after release', (error: { code?: string }) => error.code)).toBe('CACHE_LOCK_NOT_HELD');
    expect(await referenceReads(cache as RemoteCache<unknown>)).toBe(1);
  });

  test("item.path() of a value read by reference is the daemon's own file, kept until release even when replaced", async () => {
    const { socketPath, dataDir } = await startTestDaemon();
    const cache = await open<Uint8Array>(socketPath, { codec: 'binary' });
    await cache.set('id', new Uint8Array(100_000).fill(5));
    const gs = await cache.getset('id');
    const path = await gs.item!.path();
    expect(path.startsWith(join(dataDir, 'blobs') + '/')).toBe(true);
    await gs.set(new Uint8Array(100_000).fill(6));
    expect(readFileSync(path).every((byte) => byte === 5)).toBe(true);
    await gs.release();
    await eventually(async () => !(await exists(path)), 'the replaced file is removed after release');
  });

  test('a missing value file is CACHE_CORRUPT for get (the handle released) and a miss for getset, which replaces it', async () => {
    const { socketPath, dataDir } = await startTestDaemon();
    const cache = await open<Uint8Array>(socketPath, { codec: 'binary' });
    await cache.set('id', new Uint8Array(100_000).fill(1));
    const [name] = await valueFiles(dataDir);
    await unlink(join(dataDir, 'blobs', name!));
    await expectCode(cache.get('id'), 'CACHE_CORRUPT');
    expect(await cache.locks()).toEqual([]);
    // As README promises (and as with references off): the value is computed again, under the lock.
    for (let round = 0; round < 2; round++) {
      const gs = await cache.getset('id');
      expect(gs.item).toBeNull();
      expect(gs.stale).toBeNull();
      expect((await cache.locks()).map((lock) => lock.state)).toEqual(['held']);
      if (round === 1) await gs.set(new Uint8Array(100_000).fill(2));
      await gs.release();
    }
    await using got = await cache.get('id');
    expect((await got.item!.value()).every((byte) => byte === 2)).toBe(true);
  });

  test("a getset, and a get that waited for its lock, answer by reference without reading the file into the daemon's memory", async () => {
    // The memory layer keeps values up to an eighth of its size: fillers written after the large value push it out, and
    // reading the large value into it again would push out a filler of another size, changing the bytes it counts.
    const { socketPath } = await startTestDaemon({ memoryCacheBytes: 1_000_000 });
    const cache = await open<Uint8Array>(socketPath, { codec: 'binary' });
    const other = await open<Uint8Array>(socketPath, { codec: 'binary' });
    await cache.set('large', new Uint8Array(100_000).fill(1));
    for (let n = 0; n < 10; n++) await cache.set(`filler ${n}`, new Uint8Array(110_000).fill(2));
    const memoryBytes = async (): Promise<number> => (await cache.status()).memoryCacheBytes;
    const before = await memoryBytes();
    const reads = await referenceReads(cache as RemoteCache<unknown>);
    {
      await using gs = await cache.getset('large');
      const bytes = await gs.item!.value();
      expect(bytes.length === 100_000 && bytes.every((byte) => byte === 1)).toBe(true);
    }
    expect(await memoryBytes()).toBe(before);
    // A get queued behind another connection's getset goes the waiting path.
    const held = await other.getset('large');
    const waiting = cache.get('large');
    await eventually(async () => (await cache.locks()).some((lock) => lock.state === 'waiting'), 'the get waits for the getset');
    await held.release();
    {
      await using got = await waiting;
      const bytes = await got.item!.value();
      expect(bytes.length === 100_000 && bytes.every((byte) => byte === 1)).toBe(true);
    }
    expect(await memoryBytes()).toBe(before);
    expect(await referenceReads(cache as RemoteCache<unknown>)).toBe(reads + 3);
  });

  test('item.path() after the connection is lost rejects CACHE_LOCK_NOT_HELD, as the setter does', async () => {
    const { socketPath, daemon } = await startTestDaemon();
    const cache = await open<Uint8Array>(socketPath, { codec: 'binary' });
    await cache.set('large', new Uint8Array(100_000).fill(1));
    await cache.set('small', new Uint8Array(10).fill(2));
    const gs = await cache.getset('large');
    const got = await cache.get('small');
    // The daemon's own file, and a private file written for a value that came inline.
    const paths = [await gs.item!.path(), await got.item!.path()];
    await gs.set(new Uint8Array(100_000).fill(3));
    await daemon.close();
    await eventually(() => gs.item!.path().then(() => false, () => true), 'path() rejects once the connection is lost', 5_000);
    await expectCode(gs.item!.path(), 'CACHE_LOCK_NOT_HELD');
    await expectCode(got.item!.path(), 'CACHE_LOCK_NOT_HELD');
    await expectCode(gs.set(new Uint8Array(1)), 'CACHE_LOCK_NOT_HELD');
    await gs.release();
    await got.release();
    for (const path of paths) expect(await exists(path)).toBe(false);
  });

  test('a FIFO at the probe or at a value file, or a value file of another user, never blocks the client', async () => {
    const { socketPath, dataDir } = await startTestDaemon();
    const probe = join(dataDir, 'reference-probe');
    const token = readFileSync(probe, 'utf8');
    await unlink(probe);
    execFileSync('mkfifo', ['-m', '600', probe]);
    // In a child process: a blocking open would freeze its event loop for good, so it is killed after a bound.
    const client = (step: string): Promise<string> =>
      new Promise((resolve) => {
        const source = `import { connect } from './dist/client/index.js';
          const [socketPath, step] = process.argv.slice(-2);
          const cache = await connect({ socketPath, autoStart: false, codec: 'binary' });
          try {
            if (step === 'set') { await cache.set('fifo', new Uint8Array(100_000).fill(1)); await cache.set('owned', new Uint8Array(100_000).fill(2)); }
            const read = async (id) => { try { const got = await cache.get(id); await got.release(); return got.item === null ? 'miss' : (await got.item.value()).length; } catch (error) { return error.code; } };
            console.log(JSON.stringify([await read('fifo'), await read('owned'), (await cache.status()).referenceReads]));
          } finally { await cache.close(); }`;
        execFile(process.execPath, ['--input-type=module', '-e', source, '--', socketPath, step], { cwd: PROJECT_ROOT, timeout: 15_000 }, (error, stdout, stderr) =>
          resolve(error ? `failed (${error.signal ?? error.code}): ${stderr}` : stdout.trim()),
        );
      });
    // The probe is a FIFO: the connection carries bytes.
    expect(await client('set')).toBe('[100000,100000,0]');
    await unlink(probe);
    await writeFile(probe, token, { mode: 0o600 });
    const [fifo, owned] = await Promise.all(['fifo', 'owned'].map(async (id) => {
      // Each value's file, by its content.
      for (const name of await valueFiles(dataDir)) if (readFileSync(join(dataDir, 'blobs', name))[0] === (id === 'fifo' ? 1 : 2)) return join(dataDir, 'blobs', name);
      throw new Error(`no file for ${id}`);
    }));
    await unlink(fifo!);
    execFileSync('mkfifo', ['-m', '600', fifo!]);
    await chown(owned!, 65534, 65534);
    // Both answered by reference (counted), both refused by the client.
    expect(await client('read')).toBe('["CACHE_CORRUPT","CACHE_CORRUPT",2]');
  });

  test('a value file cut short, or replaced by a symbolic link, is CACHE_CORRUPT', async () => {
    const { socketPath, dataDir } = await startTestDaemon();
    const cache = await open<Uint8Array>(socketPath, { codec: 'binary' });
    await cache.set('short', new Uint8Array(100_000).fill(1));
    await cache.set('linked', new Uint8Array(100_000).fill(2));
    const [short, linked] = (await valueFiles(dataDir)).map((name) => join(dataDir, 'blobs', name));
    await truncate(short!, 50_000);
    await copyFile(linked!, join(dataDir, 'copy'));
    await unlink(linked!);
    await symlink(join(dataDir, 'copy'), linked!);
    await expectCode(cache.get('short'), 'CACHE_CORRUPT');
    await expectCode(cache.get('linked'), 'CACHE_CORRUPT');
    expect(await cache.locks()).toEqual([]);
  });

  test('a probe that cannot be read leaves the connection on bytes', async () => {
    const { socketPath, dataDir } = await startTestDaemon();
    await unlink(join(dataDir, 'reference-probe'));
    const cache = await open<Uint8Array>(socketPath, { codec: 'binary' });
    await cache.set('id', new Uint8Array(100_000).fill(3));
    await using got = await cache.get('id');
    expect((await got.item!.value()).every((byte) => byte === 3)).toBe(true);
    expect(await referenceReads(cache as RemoteCache<unknown>)).toBe(0);
  });
});

describe('references over JSON, as a client in another language does it', () => {
  const large = Buffer.alloc(100_000, 9);
  const value = { encoding: 'binary', value: large.toString('base64') };

  test('a client that does not offer references sees nothing new', async () => {
    const { socketPath } = await startTestDaemon();
    const raw = await RawClient.open(socketPath);
    const init = (await raw.initialize()) as { result: { capabilities: Record<string, unknown> } };
    expect(init.result.capabilities.references).toBeUndefined();
    await raw.request('cache/set', { scope: [], id: 'id', ...value });
    const got = (await raw.request('cache/get', { scope: [], id: 'id' })) as { result: { item: Record<string, unknown> } };
    expect(got.result.item.value).toBe(value.value);
    expect(got.result.item.file).toBeUndefined();
    // Sending a token without having been offered references enables nothing.
    expect(await raw.request('cache/enableReferences', { token: 'guess' })).toMatchObject({ result: { enabled: false } });
  });

  test('the probe\u2019s token enables file items, which read back the value; a wrong token does not', async () => {
    const { socketPath, dataDir } = await startTestDaemon();
    const raw = await RawClient.open(socketPath);
    const init = (await raw.request('initialize', { clientName: 'raw', protocolVersion: 2, references: true })) as {
      result: { capabilities: { references: { probe: string; blobDirectory: string } } };
    };
    const { probe, blobDirectory } = init.result.capabilities.references;
    expect(probe).toBe(join(dataDir, 'reference-probe'));
    expect((await stat(probe)).mode & 0o777).toBe(0o600);
    await raw.request('cache/set', { scope: [], id: 'id', ...value, ttlMs: 60_000 });
    expect(await raw.request('cache/enableReferences', { token: 'wrong' })).toMatchObject({ result: { enabled: false } });
    const inline = (await raw.request('cache/get', { scope: [], id: 'id' })) as { result: { handle: number; item: Record<string, unknown> } };
    expect(inline.result.item.value).toBe(value.value);
    raw.send({ jsonrpc: '2.0', method: 'cache/release', params: { handle: inline.result.handle } });
    const token = readFileSync(probe, 'utf8');
    expect(await raw.request('cache/enableReferences', { token })).toMatchObject({ result: { enabled: true } });
    const got = (await raw.request('cache/get', { scope: [], id: 'id' })) as { result: { handle: number; item: Record<string, unknown> } };
    const { item } = got.result;
    expect(item).toEqual({ modified: expect.any(Number), expires: expect.any(Number), encoding: 'binary', size: large.length, file: expect.stringMatching(/^[0-9a-f]{2}\//) });
    expect(readFileSync(join(blobDirectory, item.file as string)).equals(large)).toBe(true);
    raw.send({ jsonrpc: '2.0', method: 'cache/release', params: { handle: got.result.handle } });
  });

  test('a file under a held getset survives its replacement and a delete from another connection, and goes at release', async () => {
    const { socketPath } = await startTestDaemon();
    const raw = await RawClient.open(socketPath);
    const init = (await raw.request('initialize', { clientName: 'raw', protocolVersion: 2, references: true })) as {
      result: { capabilities: { references: { probe: string; blobDirectory: string } } };
    };
    const { probe, blobDirectory } = init.result.capabilities.references;
    await raw.request('cache/enableReferences', { token: readFileSync(probe, 'utf8') });
    await raw.request('cache/set', { scope: [], id: 'id', ...value });
    const gs = (await raw.request('cache/getset', { scope: [], id: 'id' })) as { result: { handle: number; item: { file: string } } };
    const path = join(blobDirectory, gs.result.item.file);
    await raw.request('cache/handleSet', { handle: gs.result.handle, encoding: 'binary', value: Buffer.alloc(50_000, 1).toString('base64') });
    const other = await open<Uint8Array>(socketPath, { codec: 'binary' });
    const deleted = other.delete('id');
    await eventually(async () => (await other.locks()).some((lock) => lock.state === 'waiting'), 'the delete waits');
    expect(await exists(path)).toBe(true);
    expect((await other.status()).pinnedBytes).toBe(large.length);
    expect(readFileSync(path).equals(large)).toBe(true);
    raw.send({ jsonrpc: '2.0', method: 'cache/release', params: { handle: gs.result.handle } });
    await deleted;
    await eventually(async () => !(await exists(path)), 'the file is removed after release');
    expect((await other.status()).pinnedBytes).toBe(0);
  });
});

describe('references over binary frames, as PROTOCOL.md lays them out', () => {
  test('enableReferences (0x0f) with the probe\u2019s token, then get answers item kinds 3 and 4', async () => {
    const { socketPath } = await startTestDaemon();
    const { client, answer } = await RawBinaryClient.open(socketPath, { references: true });
    const { probe, blobDirectory } = (answer.result as { capabilities: { references: { probe: string; blobDirectory: string } } }).capabilities.references;
    const enabled = await client.call(0x0f, 1, [['string', readFileSync(probe, 'utf8')]]);
    expect([enabled.op, enabled.u8()]).toEqual([0x80, 1]);
    const large = Buffer.alloc(70_000, 4);
    for (const [id, ttlMs] of [['plain', 0], ['expiring', 60_000]] as const) {
      const set = await client.call(0x05, 2, [['strings', []], ['string', id], ['f64', 1_700_000_000], ['f64', ttlMs], ['f64', 0], ['string', 'binary'], ['bytes', large]]);
      expect(set.op).toBe(0x80);
      const got = await client.call(0x01, 3, [['strings', []], ['string', id], ['u8', 1]]);
      expect(got.op).toBe(0x80);
      expect(got.u8()).toBe(1);
      const handle = got.u64();
      expect(got.u8()).toBe(ttlMs === 0 ? 3 : 4);
      expect(got.f64()).toBe(1_700_000_000);
      if (ttlMs !== 0) expect(got.f64()).toBeGreaterThan(Date.now() / 1000);
      expect(got.string()).toBe('binary');
      expect(got.u64()).toBe(large.length);
      const file = got.string();
      expect(readFileSync(join(blobDirectory, file)).equals(large)).toBe(true);
      client.write(frame(0x04, 0, [['u64', handle]]));
    }
  });
});

test("value() of a value over 16 MiB, asked while held and the handle released right after, reads the file: its open is not left for the thread pool, where the daemon's removal of the replaced file could pass it", async () => {
  const dir = await tempDir('hrw-');
  const dataDir = join(dir, 'data');
  const daemon = { command: [process.execPath, daemonEntry(), '--memory-cache', '0', '--idle-timeout', '30s'] };
  const cache = await connect<Uint8Array>({ socketPath: join(dir, 's.sock'), dataDir, daemon, codec: 'binary' });
  onTestFinished(() => cache.close());
  const { pid } = await cache.status();
  onTestFinished(() => void process.kill(pid, 'SIGKILL'));
  const size = 20 << 20;
  await cache.set('big', new Uint8Array(size).fill(7));
  const [file] = await valueFiles(dataDir);
  expect((await stat(join(dataDir, 'blobs', file!))).size).toBe(size);
  const got = await cache.get('big');
  // This process's thread pool busy (its 4 threads), so that work queued on it waits, as on a loaded machine.
  const busy = Array.from({ length: 4 }, () => new Promise((resolve) => pbkdf2('x', 'y', 400_000, 64, 'sha512', resolve)));
  const reading = got.item!.value().then(
    (bytes) => `read ${bytes.byteLength} bytes`,
    (error: { code?: string; message?: string }) => `${error.code}: ${error.message}`,
  );
  await got.release();
  await cache.set('big', new Uint8Array(10).fill(1));
  // The daemon (another process) removes the replaced file once released.
  await eventually(async () => (await valueFiles(dataDir)).every((path) => path !== file), 'the old file is removed');
  await Promise.all(busy);
  // Before: `CACHE_CORRUPT: The file holding a stored value, … is missing: something other than hoard changed the cache directory.`
  expect(await reading).toBe(`read ${size} bytes`);
});
