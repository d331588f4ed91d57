import { spawn } from 'node:child_process';
import { basename } from 'node:path';
import { createInterface } from 'node:readline';
import { type CodecName, codecNamed } from '../src/codecs.js';
import { CacheError, isCacheError } from '../src/errors.js';
import { codecAdapter } from '../src/codec-adapter.js';
import type { Channel } from './channel.js';
import { checkDaemonLauncher, checkReferencesOption, type DaemonLauncher, daemonSpawn, describeSpawn } from './connect.js';
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
  /** How to start the daemon (it gets `--stdio`); default the installed package's entry script, run with this process's Node. */
  daemon?: DaemonLauncher;
  /** As `connect`'s: read values' files directly when the daemon's files can be opened here; default `true`. */
  references?: boolean;
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
  checkDaemonLauncher(options.daemon);
  checkReferencesOption(options.references);
  const adapter = codecAdapter(codecNamed<T>(options.codec ?? 'json'));
  const clientName = options.clientName ?? basename(process.argv[1] ?? 'node');
  const open = async (): Promise<Channel> => {
    const daemonArgs = ['--stdio'];
    if (options.dataDir) daemonArgs.push('--data-dir', options.dataDir);
    const launch = daemonSpawn(options.daemon, daemonArgs);
    const child = spawn(launch.file, launch.args, { env: { ...process.env, ...launch.env }, stdio: ['pipe', 'pipe', 'pipe'] });
    // A program that cannot be run (ENOENT) is reported here; its streams then close, which ends the handshake.
    let spawnError: Error | undefined;
    child.on('error', (error) => (spawnError ??= error));
    child.stdin.on('error', () => {});
    // The daemon's own complaint (`hoard: …`), or Node's (`Error: Cannot find module …`) when it never ran.
    let lastLine = '';
    createInterface({ input: child.stderr }).on('line', (line) => {
      if (/^(hoard: |\w*Error\b)/.test(line) || !/^(hoard: |\w*Error\b)/.test(lastLine)) lastLine = line;
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
      return await openChannel(child.stdout, child.stdin, transport, { clientName, transport: options.transport, references: options.references !== false, chunks: true, where: 'stdio' });
    } catch (error) {
      if (!isCacheError(error, 'CACHE_CONNECTION_LOST')) throw error;
      await gone;
      const reason = spawnError?.message ?? (lastLine.replace(/^hoard: /, '') || `it exited with ${child.exitCode ?? child.signalCode}`);
      throw new CacheError('CACHE_DAEMON_START_FAILED', `The private hoard daemon could not start: ${reason} (ran: ${describeSpawn(launch)})`, {
        cause: error,
      });
    }
  };
  return new RemoteCache(new RemoteBackend(adapter, open, await open()));
}
