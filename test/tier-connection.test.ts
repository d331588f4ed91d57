import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { expect, onTestFinished, test } from 'vitest';
import { TierConnection, type TierClient, TierUnavailable, tierScript } from '../daemon/tier-connection.js';
import { makeTlsFiles, readOnlyRules, startRedisCluster, startRedisServer, startTcpProxy } from './support/redis-server.js';
import { tempDir } from './support/temp-dir.js';
import { HEALTHY_TIER, sharedKey, startTierDaemon } from './support/tier-daemon.js';

/**
 * TierConnection against real redis-servers: commands raced against the timeout, the degraded state and its PING,
 * a blackholed connection remade, the subscriber connection lost and made again, and failures counted.
 */

/** A connection (to a Cluster's seeds, when `url` is several) that logs into `log`, closed when the test ends. */
async function connect(
  url: string | readonly string[],
  options: { timeoutMs?: number; username?: string; password?: string; ca?: string; up?: boolean } = {},
) {
  const log: string[] = [];
  const connection = new TierConnection({
    urls: typeof url === 'string' ? [url] : url,
    cluster: typeof url !== 'string',
    username: options.username,
    password: options.password,
    timeoutMs: options.timeoutMs ?? 1000,
    ca: options.ca,
    log: (line) => log.push(line),
  });
  onTestFinished(() => connection.close());
  await connection.open();
  // On a busy machine the first connection may take longer than the timeout: open() then resolves degraded.
  if (options.up ?? true) await until(() => connection.up, 'connected');
  return { connection, log };
}

/** Waits until `condition` holds (polling observable state, refreshed by `poll` first), failing after a generous bound. */
async function until(condition: () => boolean, what: string, boundMs = 15_000, poll?: () => Promise<void>): Promise<void> {
  const deadline = performance.now() + boundMs;
  for (;;) {
    await poll?.();
    if (condition()) return;
    if (performance.now() > deadline) throw new Error(`Timed out waiting until ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/** A subscription's events, in order, and its messages. */
function recorder() {
  const events: string[] = [];
  return {
    events,
    handlers: {
      message: (text: string) => events.push(`message ${text}`),
      ready: () => events.push('ready'),
      lost: () => events.push('lost'),
    },
  };
}

test('commands, pipelines and scripts run with their latency measured; an error reply is counted but does not degrade', async () => {
  const server = await startRedisServer({ unixSocket: true });
  const { connection, log } = await connect(server.url);
  expect(connection.up).toBe(true);
  expect(connection.url).toBe(server.url);
  expect(await connection.run('set', (client) => client.send('k', ['SET', 'k', 'v']))).toBe('OK');
  const replies = await connection.run('read', (client) =>
    client.pipeline('{a}h', [['HSET', '{a}h', 'v', Buffer.from([0, 255])], ['HGETALL', '{a}h']], { buffers: true }),
  );
  expect(replies[1]).toEqual([Buffer.from('v'), Buffer.from([0, 255])]);
  // EVALSHA first; the server does not know the script yet, so EVAL; then EVALSHA alone.
  const script = tierScript('echo', "return ARGV[1] .. redis.call('GET', KEYS[1])");
  await server.cli('CONFIG', 'RESETSTAT');
  for (let n = 0; n < 2; n++) expect(await connection.run('script', (client) => client.script(script, ['k'], ['got ']))).toBe('got v');
  const stats = await server.cli('INFO', 'commandstats');
  expect(stats).toMatch(/cmdstat_evalsha:calls=2,.*failed_calls=1/);
  expect(stats).toMatch(/cmdstat_eval:calls=1,/);

  const wrongType = await connection.run('bad', (client) => client.send('{a}h', ['GET', '{a}h'])).catch((error: unknown) => error);
  expect(wrongType).toBeInstanceOf(TierUnavailable);
  expect(connection.up).toBe(true);
  expect(connection.figures()).toMatchObject({ state: 'connected', errors: 1, refused: 0 });
  expect(connection.figures().latencyP50Ms).toBeGreaterThan(0);
  expect(connection.figures().latencyP99Ms).toBeGreaterThanOrEqual(connection.figures().latencyP50Ms!);
  expect(log.filter((line) => line.includes('WRONGTYPE'))).toHaveLength(1);
  // A mistake in the caller's own code is passed on as it is, not counted as the tier failing.
  await expect(connection.run('mistake', () => Promise.reject(new TypeError('oops')))).rejects.toThrow(TypeError);
  expect(connection.figures().errors).toBe(1);
});

test('NOPERM is counted as refused, logged once a minute, and leaves the tier connected', async () => {
  const server = await startRedisServer({ unixSocket: true, users: [{ name: 'reader', password: 'pw', rules: readOnlyRules('t') }] });
  const { connection, log } = await connect(server.url, { username: 'reader', password: 'pw' });
  expect(await connection.run('read', (client) => client.send('{t:a}x', ['GET', '{t:a}x']))).toBeNull();
  for (let n = 0; n < 3; n++) {
    const refused = await connection.run('write', (client) => client.send('{t:a}x', ['SET', '{t:a}x', '1'])).catch((error: unknown) => error);
    expect(refused).toMatchObject({ name: 'TierUnavailable', refused: true });
  }
  expect(connection.figures()).toMatchObject({ state: 'connected', errors: 3, refused: 3 });
  expect(log.filter((line) => line.includes('NOPERM'))).toEqual([expect.stringMatching(/refused: NOPERM/)]);
});

test('a stopped Redis (no reset comes): the command times out, the tier is degraded and skips commands, the client is remade, and it is restored', async () => {
  const server = await startRedisServer({ unixSocket: true });
  const timeoutMs = 500;
  const { connection, log } = await connect(server.url, { timeoutMs });
  const states: boolean[] = [];
  connection.onStateChange((up) => states.push(up));
  const sub = recorder();
  await connection.subscribe('news', sub.handlers);
  await until(() => sub.events.length > 0, 'subscribed');
  expect(sub.events).toEqual(['ready']);

  process.kill(server.pid, 'SIGSTOP');
  onTestFinished(() => {
    process.kill(server.pid, 'SIGCONT');
  });
  let startedMs = performance.now();
  const timedOut = await connection.run('get', (client) => client.send('k', ['GET', 'k'])).catch((error: unknown) => error);
  expect(timedOut).toBeInstanceOf(TierUnavailable);
  expect(performance.now() - startedMs).toBeLessThan(timeoutMs + 2000);
  // The PING that the timeout sent times out too: degraded within a bound (two timeouts, and room for a busy machine).
  await until(() => !connection.up, 'degraded', 3 * timeoutMs + 2000);
  expect(performance.now() - startedMs).toBeLessThan(3 * timeoutMs + 2000);
  expect(connection.figures()).toMatchObject({ state: 'degraded', errors: 1, lastError: expect.stringMatching(/timed out/) });
  expect(states).toEqual([false]);
  // Degraded: rejected at once, not counted again.
  startedMs = performance.now();
  await expect(connection.run('get', (client) => client.send('k', ['GET', 'k']))).rejects.toThrow(/degraded/);
  expect(performance.now() - startedMs).toBeLessThan(timeoutMs);
  expect(connection.figures().errors).toBe(1);
  // The subscriber's PING times out too: it is lost, and the PING of the degraded tier remakes the main client.
  await until(() => sub.events.includes('lost'), 'the subscription is lost');
  await until(() => connection.figures().lastError!.includes('PING'), "the degraded tier's PING timed out");

  process.kill(server.pid, 'SIGCONT');
  await until(() => connection.up, 'the tier is up again');
  expect(states).toEqual([false, true]);
  await until(() => sub.events.at(-1) === 'ready', 'subscribed again');
  expect(await connection.run('publish', (client) => client.send('', ['PUBLISH', 'news', 'after']))).toBe(1);
  await until(() => sub.events.at(-1) === 'message after', 'the message arrived');
  expect(sub.events).toEqual(['ready', 'lost', 'ready', 'message after']);
  expect(log.some((line) => line.includes('again'))).toBe(true);
});

test('one command that times out fails alone: the PING it sends decides, and the tier stays connected; three in a row degrade it', async () => {
  const server = await startRedisServer({ unixSocket: true });
  const timeoutMs = 1000;
  const { connection, log } = await connect(server.url, { timeoutMs });
  const states: boolean[] = [];
  connection.onStateChange((up) => states.push(up));
  // A reply that comes well after the timeout (600 ms: a late timer cannot let it in), and well within the PING's own
  // timeout after it: BLPOP on a list that stays empty (it holds this connection only; a PING sent behind it is
  // answered as soon as it returns, 600 ms at most after it was sent).
  const slow = (client: TierClient) => client.send('empty', ['BLPOP', 'empty', '1.6']);
  const get = (client: TierClient) => client.send('k', ['GET', 'k']);
  await server.cli('CONFIG', 'RESETSTAT');
  const timedOut = await connection.run('slow', slow).catch((error: unknown) => error);
  expect(timedOut).toMatchObject({ name: 'TierUnavailable', message: expect.stringMatching(/timed out/) });
  expect(connection.figures()).toMatchObject({ state: 'connected', errors: 1, refused: 0, lastError: expect.stringMatching(/slow: timed out/) });
  // The next command waits behind the sleep and the PING, and succeeds; one more round trip, and the PING's answer is in.
  expect(await connection.run('get', get)).toBeNull();
  expect(await connection.run('get', get)).toBeNull();
  expect(await server.cli('INFO', 'commandstats')).toMatch(/cmdstat_ping:calls=1,/);
  expect(states).toEqual([]);
  expect(connection.figures()).toMatchObject({ state: 'connected', errors: 1 });
  expect(log.filter((line) => line.includes('timed out'))).toHaveLength(1);

  // Timeouts in a row (each sent after the last one timed out, no success between) degrade it, though PINGs answer.
  // Each is sent once the PING before it was answered, so that no BLPOP waits behind another one.
  let pings = 1;
  const countPings = async () => void (pings = Number(/cmdstat_ping:calls=(\d+),/.exec(await server.cli('INFO', 'commandstats'))?.[1]));
  for (let n = 1; n <= 3; n++) {
    await expect(connection.run('slow', slow)).rejects.toThrow(/timed out/);
    expect(connection.up).toBe(n < 3);
    if (n < 3) await until(() => pings === 1 + n, `PING ${n + 1} was answered`, 15_000, countPings);
  }
  expect(states).toEqual([false]);
  expect(connection.figures()).toMatchObject({ state: 'degraded', errors: 4 });
  await until(() => connection.up, 'restored by the PING');
  expect(states).toEqual([false, true]);
});

test('wrong credentials at start: degraded with WRONGPASS, counted once in errors (an auth failure, not a refusal)', async () => {
  const server = await startRedisServer({ unixSocket: true, users: [{ name: 'writer', password: 'right', rules: ['~*', '&*', '+@all'] }] });
  const { connection } = await connect(server.url, { username: 'writer', password: 'wrong', up: false });
  await until(() => connection.figures().lastError?.includes('WRONGPASS') === true, 'WRONGPASS seen');
  expect(connection.figures()).toMatchObject({ state: 'degraded', errors: 1, refused: 0 });
  // It goes on trying (each attempt is in ACL LOG's count): the one failure that keeps the tier down is counted once.
  const attempts = async (): Promise<number> => {
    const lines = (await server.cli('ACL', 'LOG')).split('\n');
    return Number(lines[lines.indexOf('count') + 1] ?? 0);
  };
  let seen = 0;
  await until(() => seen >= 3, 'three attempts refused', 15_000, async () => void (seen = await attempts()));
  expect(connection.figures()).toMatchObject({ state: 'degraded', errors: 1, refused: 0, lastError: expect.stringMatching(/WRONGPASS/) });
  await expect(connection.run('get', (client) => client.send('k', ['GET', 'k']))).rejects.toThrow(/degraded: .*WRONGPASS/);
  expect(connection.figures().errors).toBe(1);
});

test('a blackholed network: commands time out, the connection is remade through the restored proxy', async () => {
  const server = await startRedisServer({ unixSocket: true });
  const proxy = await startTcpProxy({ socketPath: server.socketPath! });
  const { connection } = await connect(proxy.url, { timeoutMs: 400 });
  const sub = recorder();
  await connection.subscribe('news', sub.handlers);
  await until(() => sub.events.includes('ready'), 'subscribed');
  const accepted = proxy.accepted;
  proxy.cut('blackhole');
  await expect(connection.run('get', (client) => client.send('k', ['GET', 'k']))).rejects.toThrow(/timed out/);
  await until(() => sub.events.includes('lost'), 'the subscription is lost');
  proxy.restore();
  await until(() => connection.up && sub.events.at(-1) === 'ready', 'up and subscribed again');
  // New connections were made: the old ones, into the black hole, were given up.
  expect(proxy.accepted).toBeGreaterThan(accepted);
  expect(await connection.run('publish', (client) => client.send('', ['PUBLISH', 'news', 'back']))).toBe(1);
  await until(() => sub.events.at(-1) === 'message back', 'the message arrived');
});

/** A redis-server on `socketPath` (in a directory that exists), killed when the test ends. */
function serveOn(socketPath: string): void {
  const child = spawn('redis-server', ['--port', '0', '--unixsocket', socketPath, '--unixsocketperm', '700', '--save', '', '--appendonly', 'no'], {
    stdio: 'ignore',
  });
  onTestFinished(() => {
    child.kill('SIGKILL');
  });
}

test('Redis killed and started again (connections reset): degraded at once, then restored and resubscribed', async () => {
  const server = await startRedisServer({ unixSocket: true });
  const { connection } = await connect(server.url, { timeoutMs: 500 });
  const sub = recorder();
  await connection.subscribe('news', sub.handlers);
  await until(() => sub.events.includes('ready'), 'subscribed');
  process.kill(server.pid, 'SIGKILL');
  await until(() => !connection.up && sub.events.includes('lost'), 'degraded and the subscription lost');
  const refused = await connection.run('get', (client) => client.send('k', ['GET', 'k'])).catch((error: unknown) => error);
  expect(refused).toBeInstanceOf(TierUnavailable);
  expect(connection.figures().state).toBe('degraded');
  serveOn(server.socketPath!);
  await until(() => connection.up && sub.events.at(-1) === 'ready', 'up and subscribed again');
  expect(await connection.run('publish', (client) => client.send('', ['PUBLISH', 'news', 'back']))).toBe(1);
  await until(() => sub.events.at(-1) === 'message back', 'the message arrived');
  expect(sub.events).toEqual(['ready', 'lost', 'ready', 'message back']);
});

test('Redis not there at start: open() resolves degraded, and the tier comes up by itself when Redis starts', async () => {
  const dir = await tempDir('hoard-tier-');
  const socketPath = join(dir, 'redis.sock');
  const { connection } = await connect(`unix://${socketPath}`, { timeoutMs: 300, up: false });
  expect(connection.up).toBe(false);
  expect(connection.figures()).toMatchObject({ state: 'degraded', lastError: expect.stringMatching(/ENOENT/) });
  const sub = recorder();
  await connection.subscribe('news', sub.handlers);
  expect(sub.events).toEqual([]);
  serveOn(socketPath);
  await until(() => connection.up && sub.events.includes('ready'), 'up and subscribed');
  expect(await connection.run('ping', (client) => client.send('', ['PING']))).toBe('PONG');
});

test('rediss://: a TLS-only server is reached with the CA given, and refused without it (its certificate is not trusted)', async () => {
  const tls = await makeTlsFiles();
  const server = await startRedisServer({ tls });
  expect(server.url).toMatch(/^rediss:/);
  const { connection } = await connect(server.url, { ca: tls.ca });
  expect(await connection.run('set', (client) => client.send('k', ['SET', 'k', 'over TLS']))).toBe('OK');
  expect(await server.cli('GET', 'k')).toBe('over TLS');
  const untrusted = await connect(server.url, { up: false });
  await until(() => /certificate/i.test(untrusted.connection.figures().lastError ?? ''), 'the certificate refused');
  expect(untrusted.connection.figures()).toMatchObject({ state: 'degraded', errors: 1 });
  // A CA without TLS, and seeds that mix TLS and plain, are mistakes.
  expect(() => new TierConnection({ urls: ['redis://127.0.0.1:1'], cluster: false, timeoutMs: 100, ca: tls.ca, log: () => {} })).toThrow(TypeError);
  expect(() => new TierConnection({ urls: ['rediss://127.0.0.1:1', 'redis://127.0.0.1:2'], cluster: true, timeoutMs: 100, log: () => {} })).toThrow(
    /all redis:\/\/ or all rediss:\/\//,
  );
});

test('rediss:// seeds of a TLS-only Cluster: the nodes CLUSTER SLOTS names are reached with TLS and the CA too', async () => {
  const tls = await makeTlsFiles();
  const cluster = await startRedisCluster({ masters: 3, tls });
  const { connection } = await connect([cluster.urls[0]!], { ca: tls.ca });
  const tags = ['alpha', 'beta', 'gamma', 'delta', 'epsilon', 'zeta'];
  // Their hash tags fall on every master, the two the seed list did not name included.
  const owners = new Set(await Promise.all(tags.map((tag) => cluster.cli('CLUSTER', 'KEYSLOT', `{${tag}}`).then((slot) => Math.floor((Number(slot) * 3) / 16384)))));
  expect(owners.size).toBe(3);
  for (const tag of tags) expect(await connection.run('set', (client) => client.send(`{${tag}}k`, ['SET', `{${tag}}k`, tag]))).toBe('OK');
  for (const tag of tags) expect(await cluster.cli('GET', `{${tag}}k`)).toBe(tag);
  expect(connection.figures()).toMatchObject({ state: 'connected', errors: 0 });
});

test('hoard daemon --tier rediss://… --tier-ca <file>: the daemon reaches a TLS-only Redis and writes through it', async () => {
  const tls = await makeTlsFiles();
  const server = await startRedisServer({ tls });
  const daemon = await startTierDaemon({ tier: server.url, extra: ['--tier-ca', tls.caFile], ...HEALTHY_TIER });
  let state = '';
  await until(() => state === 'connected', 'connected', 15_000, async () => void (state = (await daemon.tierStatus()).state));
  await daemon.cache.set('page', 'v');
  expect(await daemon.tierStatus()).toMatchObject({ state: 'connected', sharedWrites: 1, errors: 0, url: server.url });
  expect(Number(await server.cli('EXISTS', sharedKey({ scope: [], id: 'page' })))).toBe(1);
});
