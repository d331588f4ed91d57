import { execFileSync } from 'node:child_process';
import { truncateSync } from 'node:fs';
import { readdir, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, onTestFinished, test } from 'vitest';
import { connect } from '../client/index.js';
import { daemonEntry } from '../client/connect.js';
import { type DaemonContext, Session } from '../daemon/session.js';
import { LevelStore } from '../src/level/level-store.js';
import { LocalBackend } from '../src/local-backend.js';
import { ROOT_SCOPE } from '../src/scope-path.js';
import type { EncodedValue } from '../src/store.js';
import { GetSet, HandleSet, PROTOCOL_VERSION } from '../src/wire/protocol.js';
import { tempDir } from './support/temp-dir.js';

// Value files changed under the daemon by something other than hoard: a getset reads such a file as a miss (to
// compute the value again), and the daemon never blocks on one.

/** The paths of the value files under `blobs/`. */
async function valueFiles(dataDir: string): Promise<string[]> {
  const blobs = join(dataDir, 'blobs');
  const entries = await readdir(blobs, { recursive: true, withFileTypes: true });
  return entries.filter((entry) => entry.isFile()).map((entry) => join(entry.parentPath, entry.name));
}

describe('value files changed by something other than hoard', () => {
  test('a getset of a value whose file is cut short between its check and its read is a miss, never CACHE_CORRUPT', async () => {
    // The daemon's own parts (a real LevelStore and LocalBackend, a Session), with the file cut short by a real
    // truncate at the one moment that matters: after the getset checked it, as the daemon reads it inline.
    const dir = await tempDir('pf-');
    const store = await LevelStore.open(dir, { maxSizeBytes: Infinity, memoryCacheBytes: 0 });
    const backend = new LocalBackend<EncodedValue, EncodedValue>(store, { encode: (value) => value, decode: (value) => value });
    onTestFinished(() => backend.close());
    const lengthBytes = 64 * 1024;
    await backend.set(ROOT_SCOPE, 'v', { encoding: 'binary', bytes: new Uint8Array(lengthBytes).fill(3) }, { modified: 1 });
    let cut = 0;
    const unused = (): never => {
      throw new Error('not used by this test');
    };
    let handles = 0;
    const context: DaemonContext = {
      backend,
      version: 'test',
      maxMessageBytes: 16 * 1024 * 1024,
      maxWaitersPerConnection: 100,
      waitingClears: { count: 0 },
      referenceReads: 0,
      chunkedReads: 0,
      chunkMaxBytes: 1024 * 1024,
      filePath: (name) => store.filePath(name),
      readFile: (file) => {
        truncateSync(store.filePath(file.name), 0);
        cut++;
        return store.readFile(file);
      },
      count: () => {},
      nextHandle: () => ++handles,
      status: unused,
      locks: unused,
      gc: unused,
      verify: unused,
      requestStop: unused,
      log: () => {},
    };
    const session = new Session(context, 'test');
    onTestFinished(() => session.close());
    // A client that reads chunks and no files: the getset reads by reference, then the small file inline.
    session.initialize({ protocolVersion: PROTOCOL_VERSION, chunks: true }, 'binary');
    const answer = await session.handler(GetSet)({ scope: [], id: 'v', wait: true }, undefined);
    expect(cut).toBe(1);
    // A miss: the holder computes the value again and sets it.
    expect(answer.item).toBeNull();
    expect(answer.handle).not.toBeNull();
    await session.handler(HandleSet)({ handle: answer.handle!, value: { encoding: 'binary', bytes: new Uint8Array([1, 2]) } }, undefined);
    session.release(answer.handle!);
    await using got = (await backend.get(ROOT_SCOPE, 'v', { wait: true }))!;
    expect(Buffer.from((await got.item!.value()).bytes)).toEqual(Buffer.from([1, 2]));
  });

  test('a FIFO planted as a value\u2019s file is refused as corrupt (a get fails, a getset misses) and the daemon keeps serving others', async () => {
    // A daemon process of its own: one stuck opening the FIFO must not stop this test from seeing it.
    const dir = await tempDir('pf-');
    const socketPath = join(dir, 's.sock');
    const dataDir = join(dir, 'data');
    const daemon = { command: [process.execPath, daemonEntry(), '--memory-cache', '0', '--idle-timeout', '30s'] };
    // Without references: the daemon reads values of 32 KiB to the inline limit itself.
    const cache = await connect<Uint8Array>({ socketPath, dataDir, daemon, codec: 'binary', references: false });
    onTestFinished(() => cache.close());
    const { pid } = await cache.status();
    onTestFinished(() => void process.kill(pid, 'SIGKILL'));
    await cache.set('planted', new Uint8Array(64 * 1024).fill(1));
    const [file] = await valueFiles(dataDir);
    expect(file).toBeDefined();
    await unlink(file!);
    execFileSync('mkfifo', ['-m', '0600', file!]);
    await expect(cache.get('planted')).rejects.toMatchObject({ code: 'CACHE_CORRUPT' });
    const gs = await cache.getset('planted');
    expect(gs.item).toBeNull();
    await gs.release();
    // Another client is served: the daemon is not stuck opening the FIFO.
    const other = await connect<Uint8Array>({ socketPath, autoStart: false, codec: 'binary', references: false });
    onTestFinished(() => other.close());
    await other.set('other', new Uint8Array([4, 5]));
    await using got = await other.get('other');
    expect(Buffer.from(await got.item!.value())).toEqual(Buffer.from([4, 5]));
  });
});
