import { spawn } from 'node:child_process';
import { basename } from 'node:path';
import { createInterface } from 'node:readline';
import { type CodecName, codecNamed } from '../src/codecs.js';
import { CacheError, isCacheError } from '../src/errors.js';
import { codecAdapter } from '../src/codec-adapter.js';
import { DAEMON_NODE_FLAGS } from '../src/wire/paths.js';
import { daemonEntry } from './connect.js';
import type { Channel } from './channel.js';
import { openChannel, type TransportName } from './open-channel.js';
import { RemoteBackend, RemoteCache } from './remote-cache.js';

export interface ConnectStdioOptions {
  /** The data directory of the daemon this starts; default the daemon's own default. */
  dataDir?: string;
  /** How values become bytes, in this process; default `'json'`. */
  codec?: CodecName;
  clientName?: string;
  /** The wire format: `'binary'` (the default) or `'json'`. */
  transport?: TransportName;
}

/** How long a private daemon may take to exit after its stdin ends before it is killed. */
const EXIT_GRACE_MS = 5000;

/**
 * Starts a private daemon as a child process that serves this client over its stdin and stdout, as an editor
 * starts a language server. The daemon holds the data directory while it runs; closing the cache ends its stdin
 * and resolves once it has exited. Its log lines go to this process's stderr.
 * @throws CacheError `CACHE_DAEMON_START_FAILED` with the daemon's reason (for example, another daemon holds the
 * data directory).
 */
export async function connectStdio<T = unknown>(options: ConnectStdioOptions = {}): Promise<RemoteCache<T>> {
  const adapter = codecAdapter(codecNamed<T>(options.codec ?? 'json'));
  const clientName = options.clientName ?? basename(process.argv[1] ?? 'node');
  const open = async (): Promise<Channel> => {
    const args = [...DAEMON_NODE_FLAGS, daemonEntry(), '--stdio'];
    if (options.dataDir) args.push('--data-dir', options.dataDir);
    const child = spawn(process.execPath, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    child.stdin.on('error', () => {});
    let lastLine = '';
    createInterface({ input: child.stderr }).on('line', (line) => {
      lastLine = line;
      process.stderr.write(`${line}\n`);
    });
    const gone = new Promise<void>((resolve) => child.once('close', () => resolve()));
    try {
      const transport = {
        end: () => {
          child.stdin.end();
          setTimeout(() => child.kill('SIGKILL'), EXIT_GRACE_MS).unref();
        },
        destroy: () => child.stdin.destroy(),
        gone,
      };
      return await openChannel(child.stdout, child.stdin, transport, { clientName, transport: options.transport, where: 'stdio' });
    } catch (error) {
      if (!isCacheError(error, 'CACHE_CONNECTION_LOST')) throw error;
      await gone;
      const reason = lastLine.replace(/^hoard: /, '') || `it exited with ${child.exitCode ?? child.signalCode}`;
      throw new CacheError('CACHE_DAEMON_START_FAILED', `The private hoard daemon could not start: ${reason}`, { cause: error });
    }
  };
  return new RemoteCache(new RemoteBackend(adapter, open, await open()));
}
