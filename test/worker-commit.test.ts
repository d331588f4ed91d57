import { type ChildProcessWithoutNullStreams, spawn } from 'node:child_process';
import { once } from 'node:events';
import { readdir, realpath, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { describe, expect, onTestFinished, test } from 'vitest';
import { connect } from '../client/index.js';
import { PROJECT_ROOT } from './support/child.js';
import { startTestDaemon } from './support/daemon.js';
import { eventually } from './conformance/support.js';
import { HALF_WRITER } from './support/half-writer.js';

// Betty's pattern across processes: a holder process takes the getset and reserves a file, a worker process writes
// the value into it, the holder commits by the reservation, and a reader (this process, on its own connection) sees
// the value only once the commit is acknowledged and the lock released.

/** The holder: getset + reserveFile, prints the path, then commits (or not) and releases as told on stdin. */
const HOLDER = `
import { connect } from './dist/client/index.js';
import { createInterface } from 'node:readline';
const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
const next = async () => (await lines.next()).value;
const cache = await connect({ socketPath: process.argv.at(-1), autoStart: false, codec: 'binary' });
const gs = await cache.getset('image');
const file = await cache.reserveFile();
console.log(file.path);
if ((await next()) === 'commit') {
  await gs.setFile(file.path, { ttlMs: 3_600_000 });
  console.log('committed');
  await next();
}
await gs.release();
await file[Symbol.asyncDispose]();
console.log('released');
await next();
await cache.close();
`;


const NEW_VALUE = Buffer.alloc(64 * 1024, 7);

function child(source: string, argument: string): { process: ChildProcessWithoutNullStreams; line: () => Promise<string>; say: (line: string) => void } {
  const started = spawn(process.execPath, ['--input-type=module', '-e', source, '--', argument], { cwd: PROJECT_ROOT });
  started.stderr.pipe(process.stderr);
  onTestFinished(() => void started.kill('SIGKILL'));
  const lines = createInterface({ input: started.stdout })[Symbol.asyncIterator]();
  return { process: started, line: async () => (await lines.next()).value as string, say: (line) => void started.stdin.write(`${line}\n`) };
}

async function setUp() {
  const { socketPath, dataDir } = await startTestDaemon();
  const reader = await connect<Uint8Array>({ socketPath, autoStart: false, codec: 'binary' });
  onTestFinished(() => reader.close());
  await reader.set('image', Buffer.from('old'));
  const holder = child(HOLDER, socketPath);
  const path = await holder.line();
  const temp = join(await realpath(dataDir), 'temp');
  return { reader, holder, path, temp };
}

async function bytesOf(reader: Awaited<ReturnType<typeof setUp>>['reader'], id: string): Promise<Buffer> {
  await using got = await reader.get(id);
  return Buffer.from(await got.item!.value());
}

describe('a worker process writes the value while another process holds the getset (daemon, three processes)', () => {
  test('readers see the new value only once the holder committed it and released the lock', async () => {
    const { reader, holder, path, temp } = await setUp();
    // The daemon's own private file, empty, in its temp/ directory: written with no byte through the connection.
    expect(path.startsWith(`${temp}/`)).toBe(true);
    expect(((await stat(path)).mode & 0o777).toString(8)).toBe('600');
    const worker = child(HALF_WRITER, path);
    expect(await worker.line()).toBe('half');
    expect(await reader.get('image', { wait: false })).toBeNull();
    // A reader that waits: it is served once the lock goes, with the committed value, never the half-written file.
    const waiting = reader.get('image');
    let served = false;
    void waiting.then(() => (served = true));
    worker.say('go');
    expect(await worker.line()).toBe('done');
    holder.say('commit');
    expect(await holder.line()).toBe('committed');
    // Acknowledged: the file is the store's now (moved, read-only), and the lock is still held.
    await expect(stat(path)).rejects.toMatchObject({ code: 'ENOENT' });
    expect(await reader.get('image', { wait: false })).toBeNull();
    expect(served).toBe(false);
    holder.say('release');
    expect(await holder.line()).toBe('released');
    await using got = await waiting;
    expect(Buffer.from(await got.item!.value()).equals(NEW_VALUE)).toBe(true);
    // Read by reference: the value's own file, committed without a copy, is 0400.
    expect(((await stat(await got.item!.path())).mode & 0o777).toString(8)).toBe('400');
    expect(await readdir(temp)).toEqual([]);
    holder.process.stdin.end();
    await once(holder.process, 'exit');
  });

  test('a worker killed halfway leaves the old value, and the partial file goes when the holder disposes of it', async () => {
    const { reader, holder, path, temp } = await setUp();
    const worker = child(HALF_WRITER, path);
    expect(await worker.line()).toBe('half');
    worker.process.kill('SIGKILL');
    await once(worker.process, 'exit');
    expect((await stat(path)).size).toBe(32 * 1024);
    holder.say('give up');
    expect(await holder.line()).toBe('released');
    expect((await bytesOf(reader, 'image')).toString()).toBe('old');
    expect(await readdir(temp)).toEqual([]);
    holder.process.stdin.end();
    await once(holder.process, 'exit');
  });

  test('a holder killed with its reservation open leaves the old value, and the daemon removes the file', async () => {
    const { reader, holder, path, temp } = await setUp();
    const worker = child(HALF_WRITER, path);
    expect(await worker.line()).toBe('half');
    worker.say('go');
    expect(await worker.line()).toBe('done');
    holder.process.kill('SIGKILL');
    await once(holder.process, 'exit');
    // The session's end releases the lock and removes its reservations.
    expect((await bytesOf(reader, 'image')).toString()).toBe('old');
    // The session's end runs when the daemon sees the socket close: its removal is awaited by nothing the reader sees.
    await eventually(async () => (await readdir(temp)).length === 0, 'the dead holder\u2019s reservation is removed');
    expect(await readdir(temp)).toEqual([]);
  });
});
