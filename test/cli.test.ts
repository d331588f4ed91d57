import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, test } from 'vitest';
import { runHoard as hoard, startDaemonProcess } from './support/processes.js';
import { RawClient } from './support/raw-client.js';
import { tempDir } from './support/temp-dir.js';


/** A daemon process for CLI tests, with `run` for `hoard --socket <its socket> ...`. */
async function foregroundDaemon(extra: string[] = []) {
  const dir = await tempDir('hd-');
  const daemon = await startDaemonProcess({ socketPath: join(dir, 's.sock'), dataDir: join(dir, 'data'), extra });
  return { ...daemon, socket: daemon.socketPath, dir, run: (args: string[], input?: string | Buffer) => hoard(['--socket', daemon.socketPath, ...args], input) };
}

describe('the hoard command', () => {
  test('set and get a text value; a missing item is exit 1 with one line', async () => {
    const { run } = await foregroundDaemon();
    expect(await run(['set', 'greeting', 'hello'])).toMatchObject({ code: 0, stderr: '' });
    const got = await run(['get', 'greeting']);
    expect(got.code).toBe(0);
    expect(got.stdout.toString()).toBe('hello\n');
    const missing = await run(['get', 'nope']);
    expect(missing.code).toBe(1);
    expect(missing.stderr.trim().split('\n')).toHaveLength(1);
    expect(missing.stderr).toMatch(/^hoard: no item "nope"/);
  });

  test('--scope is repeatable and nests; values come from stdin when none is given', async () => {
    const { run } = await foregroundDaemon();
    expect((await run(['--scope', 'a', '--scope', 'b', 'set', 'k'], 'from stdin')).code).toBe(0);
    expect((await run(['--scope', 'a', '--scope', 'b', 'get', 'k'])).stdout.toString()).toBe('from stdin\n');
    expect((await run(['--scope', 'a', 'get', 'k'])).code).toBe(1);
    expect((await run(['--scope', 'b', '--scope', 'a', 'get', 'k'])).code).toBe(1);
  });

  test('--json stores JSON, --raw stores and prints bytes, and binary values need --raw to print', async () => {
    const { run } = await foregroundDaemon();
    expect((await run(['set', 'doc', '{"a":[1,2]}', '--json'])).code).toBe(0);
    expect(JSON.parse((await run(['get', 'doc'])).stdout.toString())).toEqual({ a: [1, 2] });
    expect((await run(['set', 'bad', '{not json', '--json'])).code).toBe(1);
    const bytes = Buffer.from([0, 1, 2, 255, 10]);
    expect((await run(['set', 'blob', '--raw'], bytes)).code).toBe(0);
    expect((await run(['get', 'blob', '--raw'])).stdout).toEqual(bytes);
    const asText = await run(['get', 'blob']);
    expect(asText.code).toBe(1);
    expect(asText.stderr).toMatch(/--raw/);
    expect((await run(['get', 'doc', '--raw'])).stdout.toString()).toBe('{"a":[1,2]}');
  });

  test('a value another client stored in a text encoding prints as text', async () => {
    const { run, socket } = await foregroundDaemon();
    const raw = await RawClient.open(socket);
    await raw.initialize();
    await raw.request('cache/set', { scope: [], id: 'note', encoding: 'text', value: Buffer.from('plain ✓').toString('base64') });
    expect((await run(['get', 'note'])).stdout.toString()).toBe('plain ✓\n');
  });

  test('delete and clear, with --yes for everything off a terminal', async () => {
    const { run } = await foregroundDaemon();
    await run(['set', 'a', '1']);
    await run(['--scope', 's', 'set', 'b', '2']);
    await run(['set', 'c', '3']);
    expect((await run(['delete', 'a'])).code).toBe(0);
    expect((await run(['get', 'a'])).code).toBe(1);
    expect((await run(['--scope', 's', 'clear'])).code).toBe(0);
    expect((await run(['--scope', 's', 'get', 'b'])).code).toBe(1);
    expect((await run(['get', 'c'])).code).toBe(0);
    expect((await run(['clear', '--yes'])).code).toBe(0);
    expect((await run(['get', 'c'])).code).toBe(1);
  });

  test('status and status --json', async () => {
    const { run, socket } = await foregroundDaemon();
    await run(['set', 'k', 'v']);
    await run(['get', 'k']);
    await run(['get', 'missing']);
    const json = await run(['status', '--json']);
    expect(json.code).toBe(0);
    const status = JSON.parse(json.stdout.toString()) as Record<string, unknown>;
    expect(status).toMatchObject({ socketPath: socket, connections: 1, locksHeld: 0, waiters: 0, hits: 1, misses: 1, protocolVersion: 1 });
    for (const field of ['pid', 'version', 'uptimeMs', 'dataDir', 'sizeOnDiskBytes']) expect(status).toHaveProperty(field);
    const text = (await run(['status'])).stdout.toString();
    expect(text).toMatch(/^pid\s+\d+$/m);
    expect(text).toMatch(/^hits\s+1, misses 1$/m);
  });

  test('stop ends the daemon cleanly; stop and status with no daemon say so', async () => {
    const { run, socket, exited, stdout } = await foregroundDaemon();
    const stopped = await run(['stop']);
    expect(stopped.code).toBe(0);
    expect(stopped.stderr).toMatch(/stopped the daemon/);
    expect(await exited).toBe(0);
    expect(stdout()).toBe('');
    await expect(stat(socket)).rejects.toMatchObject({ code: 'ENOENT' });
    expect((await run(['stop'])).code).toBe(0);
    const status = await run(['status']);
    expect(status.code).toBe(1);
    expect(status.stderr).toMatch(/no hoard daemon is running/);
  });

  test('SIGTERM and SIGINT stop the foreground daemon with exit 0 and remove the socket', async () => {
    for (const signal of ['SIGTERM', 'SIGINT'] as const) {
      const { child, socket, exited } = await foregroundDaemon();
      child.kill(signal);
      expect(await exited).toBe(0);
      await expect(stat(socket)).rejects.toMatchObject({ code: 'ENOENT' });
    }
  });

  test('hoard daemon --max-message-bytes and --sync', async () => {
    const { run, log } = await foregroundDaemon(['--max-message-bytes', '4096', '--sync']);
    expect(log.some((line) => line.includes('every write synced to disk'))).toBe(true);
    const tooLarge = await run(['set', 'big', 'x'.repeat(8000)]);
    expect(tooLarge.code).toBe(1);
    expect(tooLarge.stderr).toMatch(/at most 4096 bytes/);
    expect((await run(['set', 'small', 'fits'])).code).toBe(0);
    expect((await run(['get', 'small'])).stdout.toString()).toBe('fits\n');
    expect((await hoard(['daemon', '--max-message-bytes', 'lots'])).code).toBe(2);
  });

  test('hoard daemon --memory-cache takes a size, and status shows it', async () => {
    const { run } = await foregroundDaemon(['--memory-cache', '1.5MiB']);
    const status = JSON.parse((await run(['status', '--json'])).stdout.toString()) as Record<string, number>;
    expect(status.memoryCacheLimitBytes).toBe(1.5 * 1024 * 1024);
    expect(status.rssBytes).toBeGreaterThan(0);
    expect((await run(['status'])).stdout.toString()).toMatch(/^memory\s+.* resident; .* of 1\.5 MiB of values cached$/m);
    expect((await hoard(['daemon', '--memory-cache', '12 parsecs'])).code).toBe(2);
  });

  test('usage errors are exit 2', async () => {
    expect((await hoard(['frobnicate'])).code).toBe(2);
    expect((await hoard(['get'])).code).toBe(2);
    expect((await hoard(['daemon', '--idle-timeout', 'soon'])).code).toBe(2);
    expect((await hoard(['--scope', '', 'get', 'x'])).code).toBe(2);
    expect((await hoard(['--help'])).code).toBe(0);
  });

  test('a daemon that cannot start says why, with exit 1', async () => {
    const dir = await tempDir('hd-');
    const result = await hoard(['daemon', '--socket', `/tmp/${'x'.repeat(120)}.sock`, '--data-dir', dir]);
    expect(result.code).toBe(1);
    expect(result.stderr).toMatch(/at most 107/);
  });
});
