import { spawn } from 'node:child_process';
import { basename } from 'node:path';
import { type CodecName, codecNamed } from '../src/codecs.js';
import { codecAdapter } from '../src/level-cache.js';
import { cliEntry } from './connect.js';
import { DaemonConnection } from './daemon-connection.js';
import { RemoteBackend, RemoteCache } from './remote-cache.js';

export interface ConnectStdioOptions {
  /** The data directory of the daemon this starts; default the daemon's own default. */
  dataDir?: string;
  /** How values become bytes, in this process; default `'json'`. */
  codec?: CodecName;
  clientName?: string;
}

/**
 * Starts a private daemon as a child process that serves this client over its stdin and stdout, as an editor
 * starts a language server. The daemon holds the data directory while it runs and exits when the cache is closed.
 */
export async function connectStdio<T = unknown>(options: ConnectStdioOptions = {}): Promise<RemoteCache<T>> {
  const adapter = codecAdapter(codecNamed<T>(options.codec ?? 'json'));
  const clientName = options.clientName ?? basename(process.argv[1] ?? 'node');
  const open = async (): Promise<DaemonConnection> => {
    const args = [cliEntry(), 'daemon', '--stdio'];
    if (options.dataDir) args.push('--data-dir', options.dataDir);
    const child = spawn(process.execPath, args, { stdio: ['pipe', 'pipe', 'inherit'] });
    child.stdin.on('error', () => {});
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    const connection = await DaemonConnection.overStreams(child.stdout, child.stdin, {
      clientName,
      endTransport: () => child.stdin.end(),
    });
    void connection.lostPromise.then(() => exited);
    return connection;
  };
  return new RemoteCache(new RemoteBackend(adapter, open, await open()));
}
