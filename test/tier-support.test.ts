import { connect as netConnect } from 'node:net';
import { expect, test } from 'vitest';
import { readOnlyRules, startRedisCluster, startRedisServer, startTcpProxy } from './support/redis-server.js';

test('redis support: a server on a port with a read-only user, one on a Unix socket, a cluster, a proxy', async () => {
  const server = await startRedisServer({ users: [{ name: 'reader', password: 'pw', rules: readOnlyRules() }] });
  expect(await server.cli('SET', '{hoard:a}x', '1')).toBe('OK');
  const asReader = (...args: string[]) => server.cli('--user', 'reader', '--pass', 'pw', '--no-auth-warning', ...args);
  expect(await asReader('GET', '{hoard:a}x')).toBe('1');
  expect(await asReader('SET', '{hoard:a}x', '2')).toMatch(/NOPERM/);
  const unix = await startRedisServer({ unixSocket: true });
  expect(await unix.cli('PING')).toBe('PONG');
  const cluster = await startRedisCluster();
  for (let n = 0; n < 20; n++) expect(await cluster.cli('SET', `k${n}`, String(n))).toBe('OK');
  const proxy = await startTcpProxy({ port: server.port });
  const socket = netConnect(proxy.port, '127.0.0.1');
  const replies: string[] = [];
  socket.on('data', (chunk) => replies.push(chunk.toString()));
  const reset = new Promise<unknown>((resolve) => socket.once('error', resolve));
  const reply = async (): Promise<string> => {
    while (replies.length === 0) await new Promise((resolve) => setTimeout(resolve, 5));
    return replies.shift()!;
  };
  socket.write('PING\r\n');
  expect(await reply()).toBe('+PONG\r\n');
  proxy.cut();
  socket.write('PING\r\n');
  await new Promise((resolve) => setTimeout(resolve, 300));
  expect(replies).toEqual([]);
  proxy.restore();
  expect(await reply()).toBe('+PONG\r\n');
  proxy.cut('reset');
  expect(await reset).toMatchObject({ code: 'ECONNRESET' });
  socket.destroy();
  await server.stop();
});
