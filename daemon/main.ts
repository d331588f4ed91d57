import { appendFileSync, closeSync, writeSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { dirname } from 'node:path';
import { Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import { isCacheError } from '../src/errors.js';
import { MEMORY_CACHE_BYTES } from '../src/level/level-store.js';
import { repairLevelStore } from '../src/level/repair.js';
import { defaultDataDir } from '../src/wire/paths.js';
import { type Daemon, MAX_WAITERS_PER_CONNECTION, startDaemon } from './daemon.js';

/**
 * The daemon's own entry: `node daemon/main.js [options]` runs a daemon, `node daemon/main.js repair [options]`
 * repairs a data directory. `hoard daemon` and `hoard repair` run it, and clients start it.
 */

interface DaemonCommandOptions {
  socket?: string;
  dataDir?: string;
  idleTimeoutMs?: number;
  maxMessageBytes?: number;
  maxWaitersPerConnection?: number;
  memoryCacheBytes?: number;
  sync?: boolean;
  stdio?: boolean;
  /** Log here instead of standard error (the background mode). */
  logFile?: string;
  /** A file descriptor that gets one line, `ready`, `busy …` or `error …`, and is then closed. */
  readyFd?: number;
}

/**
 * Runs `hoard daemon` until it stops, then exits the process: 0 after a clean stop (signal, `hoard stop`,
 * idle timeout, end of stdin) or when another daemon already serves the data directory, 1 when it cannot start.
 */
async function runDaemonCommand(options: DaemonCommandOptions): Promise<never> {
  let log = (line: string): void => void process.stderr.write(`${line}\n`);
  if (options.logFile) {
    await mkdir(dirname(options.logFile), { recursive: true, mode: 0o700 });
    const logFile = options.logFile;
    // Synchronous, so that the last lines are on disk when the process exits; the daemon logs little.
    log = (line) => appendFileSync(logFile, `${line}\n`, { mode: 0o600 });
  }
  const stamp = (line: string): void => log(`${new Date().toISOString()} hoard[${process.pid}] ${line}`);
  const tell = (line: string): void => {
    if (options.readyFd === undefined) return;
    try {
      writeSync(options.readyFd, `${line.replaceAll('\n', ' ')}\n`);
      closeSync(options.readyFd);
    } catch {
      // The starter went away; nobody is listening for the word.
    }
  };

  // Signals are caught from the start, so that one arriving while the daemon starts still stops it cleanly.
  let daemon: Daemon | undefined;
  let signalled = false;
  for (const signal of ['SIGTERM', 'SIGINT', 'SIGHUP'] as const) {
    process.on(signal, () => {
      signalled = true;
      void daemon?.close();
    });
  }
  try {
    daemon = await startDaemon({
      socketPath: options.socket,
      dataDir: options.dataDir,
      idleTimeoutMs: options.idleTimeoutMs,
      maxMessageBytes: options.maxMessageBytes,
      maxWaitersPerConnection: options.maxWaitersPerConnection,
      memoryCacheBytes: options.memoryCacheBytes,
      sync: options.sync,
      stdio: options.stdio ? { input: process.stdin, output: process.stdout } : undefined,
      log: stamp,
    });
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error);
    if (isCacheError(error, 'CACHE_LOCKED') && !options.stdio) {
      stamp(`not starting: ${message}`);
      tell(`busy ${message}`);
      process.exit(0);
    }
    stamp(`cannot start: ${message}`);
    if (!options.logFile) process.stderr.write(`hoard: ${message}\n`);
    tell(`error ${message}`);
    process.exit(1);
  }
  tell('ready');
  if (signalled) void daemon.close();
  await daemon.closed;
  process.exit(0);
}

/** Parses `500ms`, `30s`, `15m`, `1h`, or a plain number of seconds, into milliseconds. */
function parseDuration(text: string): number {
  const match = /^(\d+(?:\.\d+)?)(ms|s|m|h)?$/.exec(text.trim());
  if (!match) throw new InvalidArgumentError('expected a duration such as 900s, 15m or 500ms (0 for never)');
  const unit = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[match[2] ?? 's']!;
  return Math.round(Number(match[1]) * unit);
}

/** Parses a size such as `65536`, `512KiB`, `32MiB` or `1GiB` into bytes. */
function parseSize(text: string): number {
  const match = /^(\d+(?:\.\d+)?)\s*(B|KiB|MiB|GiB)?$/i.exec(text.trim());
  if (!match) throw new InvalidArgumentError('expected a size such as 65536, 512KiB, 32MiB or 1GiB');
  const unit = { b: 1, kib: 1024, mib: 1024 ** 2, gib: 1024 ** 3 }[(match[2] ?? 'b').toLowerCase() as 'b']!;
  return Math.round(Number(match[1]) * unit);
}

function parseCount(text: string): number {
  const count = Number(text.trim());
  if (!/^\d+$/.test(text.trim()) || !Number.isSafeInteger(count) || count < 1) throw new InvalidArgumentError('expected a whole number, at least 1');
  return count;
}

function parseMessageLimit(text: string): number {
  const bytes = parseSize(text);
  if (bytes < 1024) throw new InvalidArgumentError('expected at least 1024 bytes');
  return bytes;
}

/** Where help (`out`) and errors (`err`) go; in stdio mode, help is printed and the process exits before serving. */
export interface EntryOutput {
  out(text: string): void;
  err(text: string): void;
}

const DATA_DIR_HELP = 'the LevelDB directory (default: $HOARD_DATA_DIR or the XDG cache directory)';

/** The `hoard daemon` command line, as the daemon's entry reads it; `name` is how help and errors call it. */
function daemonProgram(name: string, io: EntryOutput): Command {
  const program = new Command(name);
  program
    .exitOverride()
    .configureOutput({ writeOut: (text) => io.out(text), writeErr: (text) => io.err(text) })
    .description('run the daemon in the foreground')
    .option('--socket <path>', 'the socket to listen on (default: $HOARD_SOCKET or the XDG runtime directory)')
    .option('--data-dir <path>', DATA_DIR_HELP)
    .addOption(
      new Option('--idle-timeout <duration>', 'stop after this long with no connection (900s, 15m, 500ms; a bare number is seconds); 0 never')
        .argParser(parseDuration)
        .default(15 * 60_000, '15m'),
    )
    .option('--stdio', 'serve one client over stdin/stdout and exit when stdin closes')
    .option('--sync', 'flush every write to the disk before acknowledging it (survives power loss; slower)')
    .addOption(
      new Option('--max-message-bytes <size>', 'close connections that send larger messages').argParser(parseMessageLimit).default(64 * 1024 * 1024, '64MiB'),
    )
    .addOption(
      new Option('--max-waiters <count>', 'refuse a connection\u2019s requests that would wait for a lock while this many of its requests already wait')
        .argParser(parseCount)
        .default(MAX_WAITERS_PER_CONNECTION),
    )
    .addOption(
      new Option('--memory-cache <size>', 'keep recently used values in memory up to this size; 0 turns it off')
        .argParser(parseSize)
        .default(MEMORY_CACHE_BYTES, `${MEMORY_CACHE_BYTES / 1024 / 1024}MiB`),
    )
    .addOption(new Option('--log-file <path>', 'log here instead of stderr').hideHelp())
    .addOption(new Option('--ready-fd <fd>', 'announce readiness on this file descriptor').argParser(Number).hideHelp())
    .action(async (options: DaemonCommandOptions & { idleTimeout: number; memoryCache: number; maxWaiters: number }) => {
      await runDaemonCommand({ ...options, idleTimeoutMs: options.idleTimeout, memoryCacheBytes: options.memoryCache, maxWaitersPerConnection: options.maxWaiters });
    });
  return program;
}

function repairProgram(name: string, io: EntryOutput): Command {
  return new Command(name)
    .exitOverride()
    .configureOutput({ writeOut: (text) => io.out(text), writeErr: (text) => io.err(text) })
    .description('recover what LevelDB can of a damaged data directory (stop the daemon first)')
    .option('--data-dir <path>', DATA_DIR_HELP)
    .action(async (options: { dataDir?: string }) => {
      const dataDir = options.dataDir ?? defaultDataDir();
      try {
        await repairLevelStore(dataDir);
      } catch (error) {
        if (isCacheError(error, 'CACHE_LOCKED')) throw new RepairRefused(`${dataDir} is in use: stop the daemon (hoard stop) first`);
        throw error;
      }
      io.err(`hoard: repaired ${dataDir}\n`);
    });
}

class RepairRefused extends Error {}

/**
 * Runs the daemon's entry with `argv` (without node and script): `repair [options]` repairs a data directory,
 * anything else runs a daemon until it stops (which exits the process). Resolves to an exit code otherwise.
 */
export async function runDaemonMain(
  argv: readonly string[],
  io: EntryOutput = { out: (text) => void process.stdout.write(text), err: (text) => void process.stderr.write(text) },
): Promise<number> {
  const repair = argv[0] === 'repair';
  const program = repair ? repairProgram('hoard repair', io) : daemonProgram('hoard daemon', io);
  try {
    await program.parseAsync(repair ? argv.slice(1) : [...argv], { from: 'user' });
    return 0;
  } catch (error) {
    if (error instanceof CommanderError) return error.code === 'commander.helpDisplayed' || error.code === 'commander.help' ? 0 : 2;
    io.err(`hoard: ${error instanceof Error ? error.message : String(error)}\n`);
    return 1;
  }
}

if (require.main === module) {
  void runDaemonMain(process.argv.slice(2)).then((code) => {
    process.exitCode = code;
  });
}
