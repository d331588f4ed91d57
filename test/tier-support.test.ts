import { connect as netConnect } from 'node:net';
import { expect, test } from 'vitest';
import { startRedisServer, startTcpProxy } from './support/redis-server.js';

// The cut-off tests rely on these semantics of the proxy; the servers and the cluster are used by every tier test.
test('the TCP proxy: a blackhole cut holds what is sent and delivers it on restore; a reset cut resets the connections', async () => {
  const server = await startRedisServer();
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
  // Nothing comes back while cut (a reply in this time would be a proxy that forwards): a bounded wait for an absence.
  await new Promise((resolve) => setTimeout(resolve, 300));
  expect(replies).toEqual([]);
  expect(proxy.connections).toBe(1);
  proxy.restore();
  expect(await reply()).toBe('+PONG\r\n');
  proxy.cut('reset');
  expect(await reset).toMatchObject({ code: 'ECONNRESET' });
  socket.destroy();
});
