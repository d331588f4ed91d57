import { expect, test } from 'vitest';
import { connect } from '../client/index.js';
import { autoStartPaths, daemonPids, isRunning, runHoard, startModule } from './support/processes.js';

/**
 * A daemon of an older hoard: it holds the data directory's LevelDB lock, speaks protocol 0, refuses newer
 * clients, and on shutdown answers, then takes a moment to let go of the database, as a real one flushing would.
 */
const OLD_DAEMON = `
import { createServer } from 'node:net';
import { Level } from 'level';
import { createMessageConnection, ResponseError, SocketMessageReader, SocketMessageWriter } from 'vscode-jsonrpc/node';
const [socketPath, dataDir] = process.argv.slice(-2);
const db = new Level(dataDir);
await db.open();
const server = createServer((socket) => {
  const connection = createMessageConnection(new SocketMessageReader(socket), new SocketMessageWriter(socket));
  connection.onRequest('initialize', (params) => new ResponseError(8,
    'The running hoard daemon (version 0.0.1) speaks protocol 0, but this client speaks protocol ' + params.protocolVersion +
    '. Run \\'hoard stop\\' to stop the old daemon; the next connect starts one of the client\\u2019s version.',
    { code: 'CACHE_PROTOCOL_MISMATCH', daemonProtocolVersion: 0, clientProtocolVersion: params.protocolVersion }));
  connection.onRequest('shutdown', () => {
    server.close();
    setTimeout(async () => { await db.close(); process.exit(0); }, 200);
    return null;
  });
  connection.listen();
});
server.listen(socketPath, () => console.log('listening'));
`;

test('an old daemon: the client gets CACHE_PROTOCOL_MISMATCH with the remedy; hoard stop, then connect brings up the new one with the data intact', async () => {
  const { socketPath, dataDir } = await autoStartPaths();

  const before = await connect<string>({ socketPath, dataDir });
  await before.set('kept', 'across the upgrade', { modified: 42.5 });
  await before.close();
  expect((await runHoard(['--socket', socketPath, 'stop'])).code).toBe(0);

  const old = startModule(OLD_DAEMON, [socketPath, dataDir]);
  await old.line((line) => line === 'listening');
  const refused = await connect({ socketPath, dataDir }).catch((error: unknown) => error);
  expect(refused).toMatchObject({ name: 'CacheError', code: 'CACHE_PROTOCOL_MISMATCH' });
  expect((refused as Error).message).toMatch(/hoard stop/);

  const stopped = await runHoard(['--socket', socketPath, 'stop']);
  expect(stopped.code).toBe(0);
  // hoard stop returns once the old daemon is gone, so the new one can take the database at once.
  expect(await isRunning(old.child.pid!)).toBe(false);

  const after = await connect<string>({ socketPath, dataDir, startTimeoutMs: 30_000 });
  await using got = await after.get('kept');
  expect(got.item!.modified).toBe(42.5);
  expect(await got.item!.value()).toBe('across the upgrade');
  expect(await daemonPids(socketPath)).toEqual([(await after.status()).pid]);
  await got.release();
  await after.close();
});

/**
 * A protocol-1 daemon from before the binary transport: its `initialize` answer has no `transport`, and it ignores
 * the `transports` a client offers. It keeps items in a Map.
 */
const PRE_BINARY_DAEMON = `
import { createServer } from 'node:net';
import { createMessageConnection, SocketMessageReader, SocketMessageWriter } from 'vscode-jsonrpc/node';
const [socketPath] = process.argv.slice(-1);
const items = new Map();
let offered;
const server = createServer((socket) => {
  const connection = createMessageConnection(new SocketMessageReader(socket), new SocketMessageWriter(socket));
  connection.onRequest('initialize', (params) => {
    offered = params.transports;
    return { daemonVersion: '0.0.9', protocolVersion: 1, pid: process.pid, capabilities: { valueTransfer: 'base64', maxMessageBytes: 1 << 20 } };
  });
  connection.onRequest('cache/set', ({ id, encoding, value, modified }) => (items.set(id, { modified, encoding, value }), null));
  connection.onRequest('cache/get', ({ id }) => ({ handle: 1, item: items.get(id) ?? null }));
  connection.onNotification('cache/release', () => {});
  connection.onRequest('daemon/status', () => ({ offered }));
  connection.listen();
});
server.listen(socketPath, () => console.log('listening'));
`;

test('against a daemon that predates the binary transport, the client offers it and stays on JSON', async () => {
  const { socketPath } = await autoStartPaths();
  const old = startModule(PRE_BINARY_DAEMON, [socketPath]);
  await old.line((line) => line === 'listening');
  const cache = await connect<{ n: number }>({ socketPath, autoStart: false });
  await cache.set('k', { n: 7 }, { modified: 3.5 });
  {
    await using got = await cache.get('k');
    expect(got.item!.modified).toBe(3.5);
    expect(await got.item!.value()).toEqual({ n: 7 });
  }
  expect(await cache.status()).toEqual({ offered: ['binary'] });
  await cache.close();
});
