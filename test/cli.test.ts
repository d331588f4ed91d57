import { spawn } from 'node:child_process';
import { readdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, test } from 'vitest';
import { runCli } from '../client/cli.js';
import { VERSION } from '../src/version.js';
import { BIN, runHoard as hoard, startDaemonProcess } from './support/processes.js';
import { RawClient } from './support/raw-client.js';
import { startRedisServer } from './support/redis-server.js';
import { tempDir } from './support/temp-dir.js';

/**
 * Runs the CLI in this process with its output captured: for what needs no daemon process. (`hoard daemon` and
 * `hoard repair` load the daemon's built entry, dist/daemon/main.js; the system lane builds it first.)
 */
async function cli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  let stdout = '';
  let stderr = '';
  const code = await runCli(args, {
    out: (text) => void (stdout += typeof text === 'string' ? text : Buffer.from(text).toString()),
    err: (text) => void (stderr += text),
  });
  return { code, stdout, stderr };
}

/** A daemon process for CLI tests, with `run` for `hoard --socket <its socket> ...`. */
async function foregroundDaemon(extra: string[] = []) {
  const dir = await tempDir('hd-');
  const daemon = await startDaemonProcess({ socketPath: join(dir, 's.sock'), dataDir: join(dir, 'data'), extra });
  return { ...daemon, socket: daemon.socketPath, dir, run: (args: string[], input?: string | Buffer) => hoard(['--socket', daemon.socketPath, ...args], input) };
}

/** What the user does at a question on the terminal. */
type Reply = 'y' | 'Ctrl-D' | 'Ctrl-C' | 'SIGINT';

/**
 * Runs `hoard args` on a terminal of its own (a pty from util-linux's `script`, so that it asks as it does for a
 * person), waits for its question, replies, and resolves to its exit code and what it wrote, escapes removed.
 */
function onTerminal(args: string[], reply: Reply): Promise<{ code: number | null; output: string }> {
  const command = [process.execPath, BIN, ...args].map((word) => `'${word}'`).join(' ');
  const child = spawn('script', ['--quiet', '--flush', '--return', '--command', command, '/dev/null'], { stdio: ['pipe', 'pipe', 'inherit'] });
  let output = '';
  let replied = false;
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => {
    output += chunk;
    if (replied || !output.includes('[y/N]')) return;
    replied = true;
    if (reply === 'y') child.stdin.write('y\r');
    else if (reply === 'Ctrl-D') child.stdin.write('\x04');
    else if (reply === 'Ctrl-C') child.stdin.write('\x03');
    else void signalCli(args, 'SIGINT');
  });
  return new Promise((resolve) => {
    child.on('close', (code) => {
      resolve({ code, output: output.replace(/\x1b\[[0-9;]*[A-Za-z]/g, '').replaceAll('\r', '') });
    });
  });
}

/** Sends `signal` to the `hoard` process that runs with exactly `args`. */
async function signalCli(args: string[], signal: NodeJS.Signals): Promise<void> {
  for (const entry of await readdir('/proc')) {
    const cmdline = await readFile(`/proc/${entry}/cmdline`, 'utf8').catch(() => '');
    if (cmdline === [process.execPath, BIN, ...args, ''].join('\0')) process.kill(Number(entry), signal);
  }
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
    // Bytes stored as json that are not JSON: one line and exit 1, not a stack trace.
    await raw.request('cache/set', { scope: [], id: 'broken', encoding: 'json', value: Buffer.from('{nope').toString('base64') });
    const broken = await run(['get', 'broken']);
    expect(broken.code).toBe(1);
    expect(broken.stderr).toMatch(/^hoard: the value is stored as json, but its bytes are not valid JSON; use --raw to print them\n$/);
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

  test('clear on a terminal asks first; Ctrl-D, Ctrl-C and SIGINT at the question cancel with one line and no stack trace', async () => {
    const { run, socket } = await foregroundDaemon();
    await run(['set', 'kept', 'yes']);
    const cancelled = { 'Ctrl-D': [1, 'hoard: nothing cleared'], 'Ctrl-C': [130, 'hoard: interrupted, nothing cleared'], SIGINT: [130, 'hoard: interrupted, nothing cleared'] } as const;
    for (const [reply, [code, line]] of Object.entries(cancelled)) {
      const result = await onTerminal(['--socket', socket, 'clear'], reply as Reply);
      expect(result, reply).toEqual({ code, output: `Clear every item in the hoard cache? [y/N] \n${line}\n` });
      expect((await run(['get', 'kept'])).code, reply).toBe(0);
    }
    expect(await onTerminal(['--socket', socket, 'clear'], 'y')).toMatchObject({ code: 0 });
    expect((await run(['get', 'kept'])).code).toBe(1);
  });

  test('status and status --json', async () => {
    const { run, socket } = await foregroundDaemon();
    await run(['set', 'k', 'v']);
    await run(['get', 'k']);
    await run(['get', 'missing']);
    const json = await run(['status', '--json']);
    expect(json.code).toBe(0);
    const status = JSON.parse(json.stdout.toString()) as Record<string, unknown>;
    expect(status).toMatchObject({ socketPath: socket, connections: 1, locksHeld: 0, waiters: 0, hits: 1, misses: 1, protocolVersion: 2, tier: null });
    for (const field of ['pid', 'version', 'uptimeMs', 'dataDir', 'sizeOnDiskBytes']) expect(status).toHaveProperty(field);
    const text = (await run(['status'])).stdout.toString();
    expect(text).toMatch(/^pid\s+\d+$/m);
    expect(text).toMatch(/^hits\s+1, misses 1$/m);
    expect(text).toMatch(/^tier\s+none \(every scope is local\)$/m);
  });

  test('status shows the shared tier: its state, last error, latency and counts, in text and JSON', async () => {
    const redis = await startRedisServer();
    // A generous timeout, so that a busy machine's slow command does not count as an error; a stopped Redis fails at once.
    const { run } = await foregroundDaemon(['--tier', redis.url, '--share', 'pages=shared', '--tier-timeout', '10s', '--tier-lease', '30s']);
    await run(['--scope', 'pages', 'set', 'k', 'v']);
    await run(['--scope', 'pages', 'get', 'missing']);
    const json = JSON.parse((await run(['status', '--json'])).stdout.toString()) as { tier: Record<string, unknown> };
    expect(json.tier).toMatchObject({ state: 'connected', url: redis.url, lastError: null, sharedWrites: 1, sharedMisses: 1, errors: 0, sharing: { pages: 'shared' } });
    expect(json.tier.latencyP50Ms).toEqual(expect.any(Number));
    const text = (await run(['status'])).stdout.toString();
    expect(text).toMatch(new RegExp(`^tier\\s+connected ${redis.url}, latency p50 \\d+(\\.\\d)? ms, p99 \\d+(\\.\\d)? ms$`, 'm'));
    expect(text).toMatch(/^\s+sharing pages=shared$/m);
    expect(text).toMatch(/^\s+shared hits 0, misses 1, writes 1; errors 0 \(0 refused\)$/m);
    expect(text).toMatch(/^\s+leases 0, fenced writes 0, local fallbacks 0; invalidations 0, dropped scopes 0; pending changes 0$/m);
    // Redis gone: the daemon keeps serving locally, and says why the tier is degraded.
    await redis.stop();
    expect((await run(['--scope', 'pages', 'set', 'k', 'w'])).code).toBe(0);
    const degraded = (await run(['status'])).stdout.toString();
    expect(degraded).toMatch(/^tier\s+degraded /m);
    expect(degraded).toMatch(/^\s+last error: .+$/m);
  });

  test('stop ends the daemon cleanly; stop and status with no daemon say so', async () => {
    const { run, socket, exited, stdout } = await foregroundDaemon();
    const stopped = await run(['stop']);
    expect(stopped.code).toBe(0);
    expect(stopped.stderr).toMatch(/stopped the daemon/);
    expect(await exited).toBe(0);
    expect(stdout()).toBe('');
    await expect(stat(socket)).rejects.toMatchObject({ code: 'ENOENT' });
    expect((await cli(['--socket', socket, 'stop'])).code).toBe(0);
    const status = await cli(['--socket', socket, 'status']);
    expect(status.code).toBe(1);
    expect(status.stderr).toMatch(/no hoard daemon is running/);
  });

  test('stop gives up after --timeout on a daemon that does not answer: one line, exit 1', async () => {
    const { run, child } = await foregroundDaemon();
    // A suspended daemon accepts the connection (the kernel does) and never answers.
    child.kill('SIGSTOP');
    const stop = await run(['stop', '--timeout', '1s']);
    expect(stop).toMatchObject({ code: 1 });
    expect(stop.stderr).toMatch(/^hoard: the daemon on .* did not stop within 1s: it may be stuck or suspended; kill its process .*\n$/);
    expect((await cli(['stop', '--help'])).stdout).toMatch(/--timeout <duration> .*\(default: 10s\)/s);
    expect((await cli(['stop', '--timeout', 'soon'])).code).toBe(2);
  });

  test('a second daemon on a held data directory exits 3 with one line naming the holder\u2019s pid and socket', async () => {
    const first = await foregroundDaemon();
    const elsewhere = await hoard(['daemon', '--socket', join(first.dir, 'other.sock'), '--data-dir', first.dataDir]);
    expect(elsewhere.code).toBe(3);
    expect(elsewhere.stderr.split('\n')).toEqual([expect.stringMatching(/^hoard: not starting: /), '']);
    expect(elsewhere.stderr).toContain(`pid ${first.child.pid}`);
    expect(elsewhere.stderr).toContain(`on the socket ${first.socket}`);
    const same = await hoard(['daemon', '--socket', first.socket, '--data-dir', first.dataDir]);
    expect(same.code).toBe(3);
    expect(same.stderr.split('\n')).toEqual([expect.stringMatching(/^hoard: not starting: /), '']);
    expect(same.stderr).toContain(`pid ${first.child.pid}`);
    // The first one goes on serving.
    expect((await first.run(['set', 'k', 'v'])).code).toBe(0);
  });

  test('with no daemon, stop says none was running and status is exit 1 with one line', async () => {
    const socket = join(await tempDir('hd-'), 's.sock');
    const stopped = await cli(['--socket', socket, 'stop']);
    expect(stopped).toMatchObject({ code: 0, stdout: '' });
    expect(stopped.stderr).toMatch(/^hoard: no daemon was running\n$/);
    for (const args of [['status'], ['status', '--json']]) {
      const status = await cli(['--socket', socket, ...args]);
      expect(status).toMatchObject({ code: 1, stdout: '' });
      expect(status.stderr).toBe(`hoard: no hoard daemon is running on ${socket}\n`);
    }
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
    expect((await cli(['daemon', '--max-message-bytes', 'lots'])).code).toBe(2);
  });

  test('hoard daemon --memory-cache takes a size, and status shows it', async () => {
    const { run } = await foregroundDaemon(['--memory-cache', '1.5MiB']);
    const status = JSON.parse((await run(['status', '--json'])).stdout.toString()) as Record<string, number>;
    expect(status.memoryCacheLimitBytes).toBe(1.5 * 1024 * 1024);
    expect(status.rssBytes).toBeGreaterThan(0);
    expect((await run(['status'])).stdout.toString()).toMatch(/^memory\s+.* resident; .* of 1\.5 MiB of values cached$/m);
    expect((await cli(['daemon', '--memory-cache', '12 parsecs'])).code).toBe(2);
  });

  test('usage errors are exit 2, and say what is wrong on stderr', async () => {
    const usage = async (args: string[], why: RegExp): Promise<void> => {
      const result = await cli(args);
      expect(result, args.join(' ')).toMatchObject({ code: 2, stdout: '' });
      expect(result.stderr, args.join(' ')).toMatch(why);
    };
    await usage(['frobnicate'], /unknown command 'frobnicate'/);
    await usage(['get'], /missing required argument 'id'/);
    await usage(['--scope', '', 'get', 'x'], /scope name cannot be empty/);
    const both = await cli(['set', 'k', 'v', '--raw', '--json']);
    expect(both).toMatchObject({ code: 2, stdout: '' });
    expect(both.stderr).toMatch(/^hoard: choose one of --raw and --json\n$/);
    await usage(['daemon', '--idle-timeout', 'soon'], /expected a duration/);
    await usage(['daemon', '--max-message-bytes', 'lots'], /expected a size/);
    await usage(['daemon', '--max-message-bytes', '100'], /at least 1024 bytes/);
    await usage(['daemon', '--memory-cache', '12 parsecs'], /expected a size/);
  });

  test('--help lists the commands on stdout, and --version prints the version', async () => {
    const help = await cli(['--help']);
    expect(help).toMatchObject({ code: 0, stderr: '' });
    for (const command of ['daemon', 'repair', 'status', 'stop', 'get', 'set', 'delete', 'clear']) expect(help.stdout).toMatch(new RegExp(`^  ${command}\\b`, 'm'));
    expect(await cli(['--version'])).toEqual({ code: 0, stdout: `${VERSION}\n`, stderr: '' });
    // No command at all is a usage error, with the commands on stderr.
    const bare = await cli([]);
    expect(bare).toMatchObject({ code: 2, stdout: '' });
    expect(bare.stderr).toMatch(/^Usage: hoard/);
    // Defaults are shown with their units.
    const daemonHelp = (await cli(['daemon', '--help'])).stdout;
    expect(daemonHelp).toMatch(/\(default: 15m\)/);
    expect(daemonHelp).toMatch(/\(default: 64MiB\)/);
    expect(daemonHelp).toMatch(/\(default: 32MiB\)/);
    // The daemon's entry prints its own help, also on stdout.
    for (const command of ['daemon', 'repair']) {
      const own = await cli([command, '--help']);
      expect(own).toMatchObject({ code: 0, stderr: '' });
      expect(own.stdout).toMatch(/--data-dir <path>/);
    }
  });

  test('a daemon that cannot start says why, with exit 1', async () => {
    // A child process: the daemon's entry ends its process once it has tried to start.
    const dir = await tempDir('hd-');
    const result = await hoard(['daemon', '--socket', `/tmp/${'x'.repeat(120)}.sock`, '--data-dir', dir]);
    expect(result.code).toBe(1);
    expect(result.stderr).toMatch(/^hoard: cannot start: .*at most 107/);
  });

  test('a daemon given a tier password on its command line refuses to start, without echoing it', async () => {
    const dir = await tempDir('hd-');
    const result = await hoard(['daemon', '--socket', join(dir, 's.sock'), '--data-dir', dir, '--tier', 'redis://u:hunter2@127.0.0.1:1', '--share', '*=shared']);
    expect(result.code).toBe(1);
    expect(result.stderr).toMatch(/^hoard: cannot start: --tier: the URL carries a password.*HOARD_TIER_PASSWORD/);
    expect(result.stderr).not.toContain('hunter2');
    expect(await readdir(dir)).toEqual([]);
  });
});
