import { closeSync, writeSync } from 'node:fs';
import { chmod, mkdir } from 'node:fs/promises';
import { dirname } from 'node:path';
import { setFlagsFromString } from 'node:v8';
import { Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import { isCacheError } from '../src/errors.js';
import { type Holder, holderOf } from '../src/level/exclusive-open.js';
import { MEMORY_CACHE_BYTES, verifyDirectory } from '../src/level/level-store.js';
import { parseDuration } from '../src/parse-duration.js';
import { parseSize as parseSizeText } from '../src/parse-size.js';
import { repairLevelStore } from '../src/level/repair.js';
import { defaultDataDir } from '../src/wire/paths.js';
import { DataDirectoryHeld } from './data-directory-holder.js';
import { type Daemon, MAX_WAITERS_PER_CONNECTION, startDaemon } from './daemon.js';
import { LogFile } from './log-file.js';
import { oneLogLine } from './log-text.js';
import { type TierFlags, tierOptions } from './tier-options.js';

/**
 * The daemon's own entry: `node daemon/main.js [options]` runs a daemon, `node daemon/main.js repair [options]`
 * repairs a data directory. `hoard daemon` and `hoard repair` run it, and clients start it.
 */

interface DaemonCommandOptions {
  socket?: string;
  dataDir?: string;
  idleTimeoutMs?: number;
  maxMessageBytes?: number;
  chunkMaxBytes?: number;
  maxWaitersPerConnection?: number;
  memoryCacheBytes?: number;
  maxSizeBytes?: number;
  sync?: boolean;
  stdio?: boolean;
  /** Log here instead of standard error (the background mode). */
  logFile?: string;
  /**
   * A file descriptor that gets one line and is then closed: `ready`; `busy [<pid>] <why>`, another daemon serves
   * this socket or is about to (the pid is its own, when known: wait while it lives); `held <why>`, another daemon
   * or program holds the data directory (give up, and show why); or `error <why>`.
   */
  readyFd?: number;
  /** The shared tier's flags, as written: checked with the environment's `HOARD_TIER*` at start. */
  tierFlags?: TierFlags;
}

/** The exit status of a daemon that did not start because another holds its data directory or answers on its socket. */
const EXIT_HELD = 3;

/**
 * V8 lets the old generation grow to up to four times what survived its last full collection before it collects
 * again; in a daemon whose heap is mostly the memory layer, records it evicted then pile up to three times
 * `--memory-cache`. At most half again as much keeps the layer's cost near its budget.
 */
const DAEMON_HEAP_FLAG = '--heap-growing-percent=50';

/**
 * Runs `hoard daemon` until it stops, then exits the process: 0 after a clean stop (signal, `hoard stop`,
 * idle timeout, end of stdin), 1 when it cannot start, {@link EXIT_HELD} when another daemon holds its data directory
 * or answers on its socket (one line names it).
 */
async function runDaemonCommand(options: DaemonCommandOptions): Promise<never> {
  // This process is the daemon: whatever it creates, LevelDB's files included, is for its user only.
  process.umask(0o077);
  setFlagsFromString(DAEMON_HEAP_FLAG);
  let log = (line: string): void => void process.stderr.write(`${line}\n`);
  if (options.logFile) {
    await mkdir(dirname(options.logFile), { recursive: true, mode: 0o700 });
    // A log file made before this version (or by hand) may be readable by others; the log names clients and items.
    await chmod(options.logFile, 0o600).catch(() => {});
    const logFile = new LogFile(options.logFile);
    log = (line) => logFile.write(line);
  }
  /** Stamps a line that is one line already (the daemon makes its own so); this entry's own go through oneLogLine. */
  const stamp = (line: string): void => log(`${new Date().toISOString()} hoard[${process.pid}] ${line}`);
  const tell = (line: string): void => {
    if (options.readyFd === undefined) return;
    try {
      writeSync(options.readyFd, `${oneLogLine(line)}\n`);
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
    const tier = tierOptions(options.tierFlags ?? {}, process.env);
    daemon = await startDaemon({
      socketPath: options.socket,
      dataDir: options.dataDir,
      idleTimeoutMs: options.idleTimeoutMs,
      maxMessageBytes: options.maxMessageBytes,
      chunkMaxBytes: options.chunkMaxBytes,
      maxWaitersPerConnection: options.maxWaitersPerConnection,
      memoryCacheBytes: options.memoryCacheBytes,
      maxSizeBytes: options.maxSizeBytes,
      sync: options.sync,
      stdio: options.stdio ? { input: process.stdin, output: process.stdout } : undefined,
      log: stamp,
      ...(tier && { tier }),
    });
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error);
    // One line: in the log, or on stderr in the foreground (where the log is stderr).
    const say = (line: string): void => (options.logFile ? stamp(oneLogLine(line)) : void process.stderr.write(`hoard: ${oneLogLine(line)}\n`));
    // A running repair is no daemon to wait for: the starter is told that it failed, and why.
    if (isCacheError(error, 'CACHE_LOCKED') && holderOf(error)?.role !== 'repair') {
      say(`not starting: ${message}`);
      // Wait for a daemon that serves (or is about to serve) this socket; give up on data held by anyone else.
      if (!(error instanceof DataDirectoryHeld)) tell(`busy ${message}`);
      else if (error.retry) tell(error.holderPid === undefined ? `busy ${message}` : `busy ${error.holderPid} ${message}`);
      else tell(`held ${message}`);
      process.exit(EXIT_HELD);
    }
    say(`cannot start: ${message}`);
    tell(`error ${message}`);
    process.exit(1);
  }
  tell('ready');
  if (signalled) void daemon.close();
  await daemon.closed;
  process.exit(0);
}

/** Parses `500ms`, `30s`, `15m`, `1h`, or a plain number of seconds, into milliseconds. */
function parseIdleTimeout(text: string): number {
  const ms = parseDuration(text);
  if (ms === undefined) throw new InvalidArgumentError('expected a duration such as 900s, 15m or 500ms (0 for never)');
  return ms;
}

/** Parses a size such as `65536`, `512KiB`, `32MiB`, `1GiB` or `1GB` into bytes. */
function parseSize(text: string): number {
  try {
    return parseSizeText(text);
  } catch (error) {
    throw new InvalidArgumentError((error as Error).message);
  }
}

/** Parses `--max-size`: a size above 0, or `unlimited`. */
function parseMaxSize(text: string): number {
  let bytes: number;
  try {
    bytes = parseSizeText(text, { unlimited: true });
  } catch (error) {
    throw new InvalidArgumentError((error as Error).message);
  }
  if (bytes <= 0) throw new InvalidArgumentError('expected a size above 0 (or unlimited)');
  return bytes;
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

function parseChunkSize(text: string): number {
  const bytes = parseSize(text);
  if (!(Number.isSafeInteger(bytes) && bytes >= 1)) throw new InvalidArgumentError('expected a whole number of bytes, at least 1');
  return bytes;
}

/** Collects a repeatable option's values. */
function collect(value: string, previous: string[] | undefined): string[] {
  return [...(previous ?? []), value];
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
        .argParser(parseIdleTimeout)
        .default(15 * 60_000, '15m'),
    )
    .option('--stdio', 'serve one client over stdin/stdout and exit when stdin closes')
    .option('--sync', 'flush every write to the disk before acknowledging it (survives power loss; slower)')
    .addOption(
      new Option('--max-message-bytes <size>', 'close connections that send larger messages').argParser(parseMessageLimit).default(64 * 1024 * 1024, '64MiB'),
    )
    .addOption(
      new Option('--chunk-max-bytes <size>', 'send larger values in chunks of this size to clients that read in chunks (within a message)')
        .argParser(parseChunkSize)
        .default(1024 * 1024, '1MiB'),
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
    .addOption(
      new Option(
        '--max-size <size>',
        'keep the items within this size, evicting the least recently used (10GiB, 500MiB, 1GB; unlimited) ' +
          '(default: the smaller of 10GiB and a tenth of the data directory\u2019s filesystem)',
      ).argParser(parseMaxSize),
    )
    .addOption(
      new Option('--tier <url>', 'share scopes through Redis: redis://[user@]host[:port][/db], rediss://… or unix:///path (repeatable or comma-separated: cluster seeds; default: $HOARD_TIER; a password only in $HOARD_TIER_PASSWORD)').argParser(collect),
    )
    .option('--tier-cluster', 'the --tier URLs are seed nodes of a Redis Cluster')
    .addOption(
      new Option('--share <scope=mode>', 'how a top-level scope uses the tier: local, shared-read or shared; * for every scope not named (repeatable; also $HOARD_TIER_SHARE, comma-separated)').argParser(
        collect,
      ),
    )
    .option('--tier-strict', 'fail a write to a shared scope when the tier fails (CACHE_TIER_UNAVAILABLE), instead of counting it')
    .option('--tier-lease <duration>', 'how long a getset\u2019s lease outlives its daemon when that is paused or cut off (default: 10s)')
    .option('--tier-timeout <duration>', 'how long any tier command may take before it counts as failed (default: 1s, or a third of --tier-lease if less)')
    .option('--tier-max-value <size>', 'values larger than this stay local (default: 1MiB)')
    .option('--tier-prefix <name>', 'the prefix of every Redis key and channel hoard uses (default: hoard)')
    .option('--tier-log-length <count>', 'how many changes each shared scope\u2019s change log keeps, about (default: 10000)')
    .option('--tier-max-pending <count>', 'how many changes Redis did not take are remembered one by one for writing through later; past it, whole scopes are (default: 10000)')
    .option('--tier-ca <file>', 'check a rediss:// tier\u2019s certificates against the CA certificates (PEM) in this file (default: $HOARD_TIER_CA, else Node\u2019s trusted CAs)')
    .addOption(new Option('--log-file <path>', 'log here instead of stderr').hideHelp())
    .addOption(new Option('--ready-fd <fd>', 'announce readiness on this file descriptor').argParser(Number).hideHelp())
    .action(async (options: DaemonCommandOptions & TierFlags & { idleTimeout: number; memoryCache: number; maxWaiters: number; maxSize?: number }) => {
      const { tier, tierCluster, share, tierStrict, tierLease, tierTimeout, tierMaxValue, tierPrefix, tierLogLength, tierMaxPending, tierCa, ...daemon } = options;
      await runDaemonCommand({
        ...daemon,
        idleTimeoutMs: options.idleTimeout,
        memoryCacheBytes: options.memoryCache,
        maxWaitersPerConnection: options.maxWaiters,
        maxSizeBytes: options.maxSize,
        tierFlags: { tier, tierCluster, share, tierStrict, tierLease, tierTimeout, tierMaxValue, tierPrefix, tierLogLength, tierMaxPending, tierCa },
      });
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
      // What the repair writes (LevelDB's new tables and manifest) is for the user only, as the daemon's files are.
      const umask = process.umask(0o077);
      try {
        await repairLevelStore(dataDir);
      } catch (error) {
        if (isCacheError(error, 'CACHE_LOCKED')) throw new RepairRefused(repairRefusal(dataDir, holderOf(error)));
        throw error;
      } finally {
        process.umask(umask);
      }
      io.err(`hoard: repaired ${dataDir}\n`);
    });
}

/**
 * `verify`: recounts a data directory that no daemon holds (`hoard verify` runs it when none answers) and writes the
 * report as one line of JSON, for the CLI to show.
 */
function verifyProgram(name: string, io: EntryOutput): Command {
  return new Command(name)
    .exitOverride()
    .configureOutput({ writeOut: (text) => io.out(text), writeErr: (text) => io.err(text) })
    .description('recount a data directory that no daemon holds, and fix what differs')
    .option('--data-dir <path>', DATA_DIR_HELP)
    .option('--no-fix', 'only report')
    .action(async (options: { dataDir?: string; fix: boolean }) => {
      const dataDir = options.dataDir ?? defaultDataDir();
      const umask = process.umask(0o077);
      try {
        io.out(`${JSON.stringify(await verifyDirectory(dataDir, { fix: options.fix }))}\n`);
      } catch (error) {
        if (isCacheError(error, 'CACHE_LOCKED')) throw new RepairRefused(repairRefusal(dataDir, holderOf(error)).replace('stop it first', 'verify through it (hoard verify)'));
        throw error;
      } finally {
        process.umask(umask);
      }
    });
}

class RepairRefused extends Error {}

/** Why `hoard repair` will not touch `dataDir`, naming who holds it and how to stop them. */
function repairRefusal(dataDir: string, holder: Holder | undefined): string {
  if (holder?.role === 'daemon') {
    const stop = holder.socketPath === null ? 'close the client that started it' : `hoard --socket ${holder.socketPath} stop`;
    const where = holder.socketPath === null ? 'serving one client over stdio' : `listening on ${holder.socketPath}`;
    return `${dataDir} is in use by the hoard daemon (pid ${holder.pid}) ${where}: stop it first (${stop})`;
  }
  if (holder?.role === 'repair') return `${dataDir} is being repaired already, by hoard repair (pid ${holder.pid})`;
  const who = holder ? `another process (pid ${holder.pid})` : 'a daemon or another process';
  return `${dataDir} is in use by ${who}: stop it first (hoard stop stops the daemon on the default socket)`;
}

/**
 * Runs the daemon's entry with `argv` (without node and script): `repair [options]` repairs a data directory,
 * `verify [options]` recounts one, anything else runs a daemon until it stops (which exits the process). Resolves to
 * an exit code otherwise.
 */
export async function runDaemonMain(
  argv: readonly string[],
  io: EntryOutput = { out: (text) => void process.stdout.write(text), err: (text) => void process.stderr.write(text) },
): Promise<number> {
  const tool = argv[0] === 'repair' || argv[0] === 'verify' ? argv[0] : undefined;
  const program =
    tool === 'repair' ? repairProgram('hoard repair', io) : tool === 'verify' ? verifyProgram('hoard verify', io) : daemonProgram('hoard daemon', io);
  try {
    await program.parseAsync(tool ? argv.slice(1) : [...argv], { from: 'user' });
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
