import { createInterface } from 'node:readline';
import { Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import { defaultSocketPath } from '../src/wire/paths.js';
import { isCacheError } from '../src/errors.js';
import { parseDuration } from '../src/parse-duration.js';
import {
  Clear,
  Delete,
  Gc,
  Get,
  isChunkedItem,
  isFileItem,
  List,
  type LockInfo,
  Locks,
  MAX_LIST_LIMIT,
  Release,
  Set as SetItem,
  Shutdown,
  Status,
  type StatusResult,
  Verify,
} from '../src/wire/protocol.js';
import type { TierStatus } from '../src/shared-tier.js';
import type { VerifyReport } from '../src/store.js';
import { VERSION } from '../src/version.js';
import { daemonEntry, openOrStart } from './connect.js';
import { type Channel, isNoDaemon } from './channel.js';
import { openWithoutHandshake } from './open-channel.js';

/** Encodings other clients may use for plain UTF-8 text, printed as they are. */
const TEXT_ENCODINGS = new Set(['text', 'utf8', 'utf-8']);

/** How long `hoard stop` waits for the daemon to stop, by default. */
const STOP_TIMEOUT_MS = 10_000;

function parseTimeout(text: string): number {
  const ms = parseDuration(text);
  if (ms === undefined || ms <= 0) throw new InvalidArgumentError('expected a duration such as 10s, 1m or 500ms');
  return ms;
}

function formatDuration(ms: number): string {
  return ms % 1000 === 0 ? `${ms / 1000}s` : `${ms}ms`;
}

/** The exit status of `get --timeout` and `get --no-wait` when the item stays locked. */
const EXIT_LOCKED = 4;

/** Text another client chose (an id, a scope or client name), quoted when it holds anything that is not plain to print. */
function shown(text: string): string {
  return /^[^\x00-\x1f\x7f-\x9f"\\]+$/u.test(text) && text.isWellFormed() ? text : JSON.stringify(text);
}

/** An item's or a scope's address as the CLI prints it: the scope names, each followed by `/`, then the id. */
function address(scope: readonly string[], id: string | null): string {
  return `${scope.map((name) => `${shown(name)}/`).join('')}${id === null ? '' : shown(id)}` || '/';
}

/** A time in seconds since the epoch as a UTC date and time, or `-`. */
function formatTime(seconds: number | null): string {
  return seconds === null ? '-' : `${new Date(seconds * 1000).toISOString().slice(0, 19).replace('T', ' ')}Z`;
}

/** Lines of columns, each padded to its widest cell (the last left as it is). */
function table(rows: string[][]): string {
  const widths = rows[0]!.map((_, column) => Math.max(...rows.map((row) => row[column]!.length)));
  return rows.map((row) => row.map((cell, column) => (column === row.length - 1 ? cell : cell.padEnd(widths[column]!))).join('  ')).join('\n') + '\n';
}

/** Who holds (or waits ahead for) the lock an item's read is behind, in one phrase, from `daemon/locks`. */
function holders(locks: readonly LockInfo[], scope: readonly string[], id: string): string {
  const covers = (lock: LockInfo): boolean =>
    lock.mode === 'subtree'
      ? lock.scope.length <= scope.length && lock.scope.every((name, n) => name === scope[n])
      : lock.id === id && lock.scope.length === scope.length && lock.scope.every((name, n) => name === scope[n]);
  const relevant = locks.filter((lock) => covers(lock) && lock.mode !== 'shared');
  const held = relevant.filter((lock) => lock.state === 'held');
  const who = (lock: LockInfo): string => {
    const kind = lock.mode === 'subtree' ? `a clear of ${address(lock.scope, null)}` : 'a write';
    const client = lock.client === null ? 'the daemon' : shown(lock.client);
    const pid = lock.pid === null ? '' : ` (pid ${lock.pid})`;
    return `${kind} by ${client}${pid} for ${formatDuration(Math.max(0, Math.round((Date.now() - lock.sinceMs) / 100) * 100))}`;
  };
  if (held.length > 0) return `locked by ${held.map(who).join(', ')}`;
  const ahead = relevant.filter((lock) => lock.state === 'waiting');
  if (ahead.length > 0) return `behind ${ahead.map(who).join(', ')}, waiting`;
  return 'locked (its holder has let go since)';
}

/** An expected failure: one line on stderr, exit code 1. */
class Failure extends Error {}

/** A command that already said why it failed, and exits with this code. */
class ExitCode extends Error {
  constructor(readonly code: number) {
    super(`exit ${code}`);
  }
}

/** The daemon's entry, loaded by path at run time (see `daemonEntry`). */
function loadDaemonEntry(): { runDaemonMain(argv: string[], io: { out: (text: string) => void; err: (text: string) => void }): Promise<number> } {
  // eslint-disable-next-line @typescript-eslint/no-require-imports -- a path computed at run time: client/ never imports daemon/
  return require(daemonEntry()) as ReturnType<typeof loadDaemonEntry>;
}

interface Globals {
  socket?: string;
  scope: string[];
}

function collect(value: string, previous: string[]): string[] {
  if (value === '') throw new InvalidArgumentError('a scope name cannot be empty');
  return [...previous, value];
}

async function readStdin(): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

/** `hoard status`'s lines about the shared tier (one saying there is none, when the daemon runs without). */
function tierLines(tier: TierStatus | null | undefined): string[] {
  // A daemon of an earlier version sends no `tier` field: it has no tier either.
  if (!tier) return ['tier         none (every scope is local)'];
  const ms = (value: number | null): string => (value === null ? '-' : `${value < 10 ? value.toFixed(1) : Math.round(value)} ms`);
  const sharing = Object.entries(tier.sharing)
    .map(([name, mode]) => `${name === '*' ? '*' : name === '' ? '(root)' : shown(name)}=${mode}`)
    .join(', ');
  const lines = [
    `tier         ${tier.state} ${tier.url}, latency p50 ${ms(tier.latencyP50Ms)}, p99 ${ms(tier.latencyP99Ms)}`,
    `             sharing ${sharing || 'none (every scope is local)'}`,
    `             shared hits ${tier.sharedHits}, misses ${tier.sharedMisses}, writes ${tier.sharedWrites}; ` +
      `errors ${tier.errors} (${tier.refused} refused)`,
    `             leases ${tier.leases}, fenced writes ${tier.fencedWrites}, local fallbacks ${tier.localFallbacks}; ` +
      `invalidations ${tier.invalidations}, dropped scopes ${tier.droppedScopes}` +
      // A daemon of an earlier version sends no `pendingChanges`.
      (tier.pendingChanges === undefined ? '' : `; pending changes ${tier.pendingChanges}`),
  ];
  // Only when there are any (a daemon of an earlier version sends none).
  if ((tier.evictedBeforeWriteThrough ?? 0) > 0) lines.push(`             evicted before written through ${tier.evictedBeforeWriteThrough}`);
  // A daemon of an earlier version sends no `downNodes`.
  if (tier.downNodes !== undefined && tier.downNodes.length > 0) lines.push(`             nodes down: ${tier.downNodes.map(shown).join(', ')}`);
  if (tier.lastError !== null) lines.push(`             last error: ${shown(tier.lastError)}`);
  return lines;
}

function formatBytes(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) (value /= 1024), unit++;
  return `${unit ? value.toFixed(1) : value} ${units[unit]}`;
}

/** The exit status of a command interrupted at its question (Ctrl-C), as a shell reports one killed by SIGINT. */
const EXIT_INTERRUPTED = 130;

/**
 * Asks `question` on the terminal and resolves to the answer: `yes`, `no`, `ended` for the end of input (Ctrl-D),
 * or `interrupted` for Ctrl-C (read as a key in the terminal's raw mode, or SIGINT sent to the process).
 */
function confirm(question: string): Promise<'yes' | 'no' | 'ended' | 'interrupted'> {
  return new Promise((resolve) => {
    const prompt = createInterface({ input: process.stdin, output: process.stderr });
    let answered = false;
    const finish = (answer: 'yes' | 'no' | 'ended' | 'interrupted'): void => {
      if (answered) return;
      answered = true;
      process.off('SIGINT', onSignal);
      prompt.close();
      resolve(answer);
    };
    const onSignal = (): void => finish('interrupted');
    process.once('SIGINT', onSignal);
    prompt.once('SIGINT', onSignal);
    prompt.once('close', () => finish('ended'));
    prompt.question(question, (text) => finish(/^y(es)?$/i.test(text.trim()) ? 'yes' : 'no'));
  });
}

/** A raw connection for the commands that handle stored bytes and encodings themselves. */
async function open(globals: Globals, { start }: { start: boolean }): Promise<Channel> {
  const socketPath = globals.socket ?? defaultSocketPath();
  try {
    return await openOrStart(socketPath, { clientName: 'hoard cli', autoStart: start });
  } catch (error) {
    if (!start && isCacheError(error, 'CACHE_NO_DAEMON')) throw new Failure(`no hoard daemon is running on ${socketPath}`);
    throw error;
  }
}

async function withConnection<R>(globals: Globals, start: boolean, run: (c: Channel) => Promise<R>): Promise<R> {
  const connection = await open(globals, { start });
  try {
    return await run(connection);
  } finally {
    await connection.close();
  }
}

/** Builds the `hoard` program; `out` and `err` receive its output. */
export function buildProgram(io: { out: (text: string | Uint8Array) => void; err: (text: string) => void }): Command {
  const program = new Command('hoard');
  program
    .exitOverride()
    .configureOutput({ writeOut: (text) => io.out(text), writeErr: (text) => io.err(text) })
    .description('A shared cache for the tools on one developer\u2019s machine.')
    .version(VERSION)
    .option('--socket <path>', 'the daemon\u2019s socket (default: $HOARD_SOCKET or the XDG runtime directory)')
    .option('--scope <name>', 'a scope; repeat for nested scopes', collect, [] as string[]);
  const globals = (): Globals => program.opts<Globals>();

  // The daemon's own entry runs these, so that the client never loads the daemon or LevelDB's addon.
  for (const [name, description] of [
    ['daemon', 'run the daemon in the foreground (hoard daemon --help for its options)'],
    ['repair', 'recover what LevelDB can of a damaged data directory (stop the daemon first)'],
  ] as const) {
    program
      .command(name)
      .description(description)
      .helpOption(false)
      .allowUnknownOption()
      .allowExcessArguments()
      .argument('[options...]')
      .action(async (_args: string[], _options: unknown, command: Command) => {
        const socket = name === 'daemon' && globals().socket ? ['--socket', globals().socket!] : [];
        const args = name === 'repair' ? ['repair', ...command.args] : [...socket, ...command.args];
        const code = await loadDaemonEntry().runDaemonMain(args, { out: io.out, err: io.err });
        if (code !== 0) throw new ExitCode(code);
      });
  }

  program
    .command('status')
    .description('show the daemon\u2019s state: size and limit, items, hits, misses, evictions, expirations, per top-level scope')
    .option('--json', 'print JSON')
    .action(async (options: { json?: boolean }) => {
      const scope = globals().scope;
      const status: StatusResult = await withConnection(globals(), false, (c) => c.request(Status, scope.length > 0 ? { scope } : {}));
      if (options.json) return io.out(`${JSON.stringify(status, null, 2)}\n`);
      const limit = status.limitBytes === null ? 'no limit' : `limit ${formatBytes(status.limitBytes)}`;
      const lines = [
        `pid          ${status.pid}`,
        `version      ${status.version} (protocol ${status.protocolVersion})`,
        `uptime       ${Math.round(status.uptimeMs / 1000)} s`,
        `socket       ${status.socketPath ?? '(stdio)'}`,
        `data         ${status.dataDir} (${formatBytes(status.sizeOnDiskBytes)} on disk)`,
        `size         ${formatBytes(status.sizeBytes)} (${limit}), ${status.items} items${status.reservedBytes > 0 ? `; ${formatBytes(status.reservedBytes)} being written` : ''}`,
        `connections  ${status.connections}`,
        `locks        ${status.locksHeld} held, ${status.waiters} waiting`,
        `hits         ${status.hits}, misses ${status.misses}`,
        `evictions    ${status.evictions} (${formatBytes(status.evictedBytes)}), expirations ${status.expirations}` +
          (status.housekeepingFailures > 0 ? `, ${status.housekeepingFailures} failed passes (see the daemon's log)` : ''),
        `memory       ${formatBytes(status.rssBytes)} resident; ${formatBytes(status.memoryCacheBytes)} of ${formatBytes(status.memoryCacheLimitBytes)} of values cached`,
      ];
      if (status.scope) lines.push(`scope        ${address(status.scope.path, null)}: ${formatBytes(status.scope.sizeBytes)}, ${status.scope.items} items`);
      lines.push(...tierLines(status.tier));
      io.out(lines.join('\n') + '\n');
      if (status.scopes.length === 0) return;
      io.out(
        '\n' +
          table([
            ['SCOPE', 'SIZE', 'ITEMS', 'HITS', 'MISSES', 'EVICTIONS', 'EXPIRATIONS'],
            ...status.scopes.map((row) => [
              row.name === '' ? '(root)' : shown(row.name),
              formatBytes(row.sizeBytes),
              String(row.items),
              String(row.hits),
              String(row.misses),
              String(row.evictions),
              String(row.expirations),
            ]),
          ]),
      );
      const others = status.otherScopes;
      if (others.count > 0) io.out(`and ${others.count} more scopes (${formatBytes(others.sizeBytes)}, ${others.items} items)\n`);
    });

  program
    .command('ls')
    .description('list the items and nested scopes of the scope (the root without --scope), all of them, page by page')
    .option('-l, --long', 'show each item\u2019s size, modified, expires and accessed')
    .option('--json', 'print one JSON object per line: {"type":"scope",...} or {"type":"item",...}')
    .action(async (options: { long?: boolean; json?: boolean }) => {
      const scope = globals().scope;
      await withConnection(globals(), true, async (c) => {
        // Pages stream, so the columns have fixed widths: a size, then three times.
        const columns = (cells: string[], name: string): string => `${cells.map((cell, n) => cell.padEnd(n === 0 ? 10 : 20)).join('  ')}  ${name}\n`;
        if (options.long && !options.json) io.out(columns(['SIZE', 'MODIFIED', 'EXPIRES', 'ACCESSED'], 'ID'));
        let cursor: string | undefined;
        do {
          const page = await c.request(List, { scope, cursor, limit: MAX_LIST_LIMIT });
          let text = '';
          for (const name of page.scopes) {
            if (options.json) text += `${JSON.stringify({ type: 'scope', name })}\n`;
            else text += options.long ? columns(['-', '-', '-', '-'], `${shown(name)}/`) : `${shown(name)}/\n`;
          }
          for (const entry of page.items) {
            if (options.json) text += `${JSON.stringify({ type: 'item', ...entry })}\n`;
            else if (!options.long) text += `${shown(entry.id)}\n`;
            else text += columns([formatBytes(entry.sizeBytes), formatTime(entry.modified), formatTime(entry.expires), formatTime(entry.accessed)], shown(entry.id));
          }
          if (text) io.out(text);
          cursor = page.cursor ?? undefined;
        } while (cursor !== undefined);
      });
    });

  program
    .command('locks')
    .description('show every held lock and every waiting request: item, kind, state, client and pid, since when')
    .option('--json', 'print JSON')
    .action(async (options: { json?: boolean }) => {
      const { locks } = await withConnection(globals(), false, (c) => c.request(Locks, undefined));
      if (options.json) return io.out(`${JSON.stringify(locks, null, 2)}\n`);
      if (locks.length === 0) return io.out('no locks held or waited for\n');
      const now = Date.now();
      io.out(
        table([
          ['ITEM', 'KIND', 'STATE', 'PID', 'SINCE', 'CLIENT'],
          ...locks.map((lock) => [
            address(lock.scope, lock.id),
            lock.mode === 'subtree' ? 'scope' : lock.mode,
            lock.state,
            lock.pid === null ? '-' : String(lock.pid),
            `${formatTime(lock.sinceMs / 1000)} (${formatDuration(Math.max(0, Math.round((now - lock.sinceMs) / 100) * 100))})`,
            lock.client === null ? '-' : shown(lock.client),
          ]),
        ]),
      );
    });

  program
    .command('gc')
    .description('evict least recently used items down to the limit and remove expired ones, now')
    .option('--dry-run', 'only say what would be removed')
    .action(async (options: { dryRun?: boolean }) => {
      const result = await withConnection(globals(), true, (c) => c.request(Gc, { dryRun: options.dryRun === true }));
      const verb = result.dryRun ? 'would evict' : 'evicted';
      io.out(
        `${verb} ${result.evictedItems} items (${formatBytes(result.evictedBytes)}) and ${result.dryRun ? 'remove' : 'removed'} ` +
          `${result.expiredItems} expired (${formatBytes(result.expiredBytes)}); size ${result.dryRun ? 'would be' : 'now'} ${formatBytes(result.sizeBytes)}\n`,
      );
    });

  program
    .command('verify')
    .description('recount the data against the figures kept, report drift, orphan files and stray entries, and fix them')
    .option('--no-fix', 'only report')
    .option('--data-dir <path>', 'with no daemon running, the data directory to open (default: $HOARD_DATA_DIR or the XDG cache directory)')
    .action(async (options: { fix: boolean; dataDir?: string }) => {
      let report: VerifyReport;
      let connection: Channel | undefined;
      try {
        connection = await open(globals(), { start: false });
      } catch (error) {
        if (!(error instanceof Failure)) throw error;
      }
      if (connection) {
        try {
          report = await connection.request(Verify, { fix: options.fix });
        } finally {
          await connection.close();
        }
      } else {
        // No daemon: the daemon's entry opens the directory itself (the client never loads LevelDB).
        let json = '';
        const args = ['verify', ...(options.dataDir === undefined ? [] : ['--data-dir', options.dataDir]), ...(options.fix ? [] : ['--no-fix'])];
        const code = await loadDaemonEntry().runDaemonMain(args, { out: (text) => void (json += text), err: io.err });
        if (code !== 0) throw new ExitCode(code);
        report = JSON.parse(json) as VerifyReport;
      }
      const problems = report.driftedScopes.length > 0 || report.orphanFiles > 0 || report.strayEntries > 0;
      const drift = report.driftedScopes.length === 0 ? 'no drift' : `drift in ${report.driftedScopes.map((name) => (name === '' ? '(root)' : shown(name))).join(', ')}`;
      io.out(
        `kept ${report.kept.items} items (${formatBytes(report.kept.bytes)}), counted ${report.counted.items} items (${formatBytes(report.counted.bytes)}); ` +
          `${drift}; ${report.orphanFiles} orphan files (${formatBytes(report.orphanBytes)}); ${report.strayEntries} stray entries` +
          `${problems ? (report.fixed ? '; fixed' : '; not fixed (--no-fix)') : ''}\n`,
      );
      if (problems && !report.fixed) throw new ExitCode(1);
    });

  program
    .command('stop')
    .description('stop the daemon')
    .addOption(
      new Option('--timeout <duration>', 'how long to wait for the daemon to stop (10s, 1m, 500ms)')
        .argParser(parseTimeout)
        .default(STOP_TIMEOUT_MS, `${STOP_TIMEOUT_MS / 1000}s`),
    )
    .action(async (options: { timeout: number }) => {
      const socketPath = globals().socket ?? defaultSocketPath();
      let connection: Channel | undefined;
      const stopping = (async (): Promise<'stopped' | 'none'> => {
        // No handshake: a daemon of another protocol version must be stoppable too.
        try {
          connection = await openWithoutHandshake(socketPath);
        } catch (error) {
          if (isNoDaemon(error)) return 'none';
          throw error;
        }
        // A daemon that goes away before its answer arrives has stopped all the same.
        await connection.request(Shutdown, undefined).catch((error: unknown) => {
          if (!isCacheError(error, 'CACHE_CONNECTION_LOST')) throw error;
        });
        await connection.lostPromise;
        return 'stopped';
      })();
      // Once given up on, its failure (the connection closed below) is no one's concern.
      stopping.catch(() => {});
      let timer: NodeJS.Timeout | undefined;
      const late = new Promise<'late'>((resolve) => (timer = setTimeout(() => resolve('late'), options.timeout)));
      const outcome = await Promise.race([stopping, late]).finally(() => clearTimeout(timer));
      if (outcome === 'none') return io.err('hoard: no daemon was running\n');
      if (outcome === 'stopped') return io.err('hoard: stopped the daemon\n');
      await connection?.close();
      throw new Failure(
        `the daemon on ${socketPath} did not stop within ${formatDuration(options.timeout)}: it may be stuck or suspended; ` +
          `kill its process (\`ss -xlp src ${socketPath}\` shows its pid)`,
      );
    });

  program
    .command('get <id>')
    .description('print an item\u2019s value')
    .option('--raw', 'print the stored bytes as they are')
    .addOption(new Option('--timeout <duration>', 'give up (exit 4) when the item stays locked this long (5s, 1m, 500ms)').argParser(parseTimeout))
    .option('--no-wait', 'give up (exit 4) at once when the item is locked')
    .action(async (id: string, options: { raw?: boolean; timeout?: number; wait: boolean }) => {
      const scope = globals().scope;
      await withConnection(globals(), true, async (c) => {
        const signal = options.timeout === undefined ? undefined : AbortSignal.timeout(options.timeout);
        let answer;
        try {
          answer = await c.request(
            Get,
            { scope, id, wait: options.wait },
            {
              signal,
              abandoned: (late) => {
                if (late.handle !== null) c.notify(Release, { handle: late.handle });
              },
            },
          );
        } catch (error) {
          if (!signal?.aborted) throw error;
        }
        if (!answer || answer.handle === null) {
          const { locks } = await c.request(Locks, undefined);
          const after = options.timeout === undefined ? '' : ` after ${formatDuration(options.timeout)}`;
          io.err(`hoard: gave up${after}: ${address(scope, id)} is ${holders(locks, scope, id)}\n`);
          throw new ExitCode(EXIT_LOCKED);
        }
        const { handle, item } = answer;
        c.notify(Release, { handle });
        if (!item) throw new Failure(`no item ${JSON.stringify(id)}`);
        // The CLI does not offer references: its answers carry the bytes.
        if (isFileItem(item) || isChunkedItem(item)) throw new Failure('the daemon answered by reference or in chunks, which this command did not ask for');
        const { encoding, bytes: stored } = item.value;
        const bytes = Buffer.from(stored.buffer, stored.byteOffset, stored.byteLength);
        if (options.raw) return io.out(bytes);
        if (TEXT_ENCODINGS.has(encoding)) return io.out(`${bytes.toString('utf8')}\n`);
        if (encoding !== 'json') {
          throw new Failure(`the value is stored as ${encoding}, not text; use --raw to print its bytes`);
        }
        let value: unknown;
        try {
          value = JSON.parse(bytes.toString('utf8'));
        } catch {
          throw new Failure('the value is stored as json, but its bytes are not valid JSON; use --raw to print them');
        }
        io.out(`${typeof value === 'string' ? value : JSON.stringify(value, null, 2)}\n`);
      });
    });

  program
    .command('set <id> [value]')
    .description('store a value (from standard input when none is given)')
    .option('--raw', 'store the bytes as they are (binary encoding)')
    .option('--json', 'parse the value as JSON instead of storing it as a string')
    .action(async (id: string, value: string | undefined, options: { raw?: boolean; json?: boolean }) => {
      if (options.raw && options.json) throw new InvalidArgumentError('choose one of --raw and --json');
      const input = value === undefined ? await readStdin() : Buffer.from(value, 'utf8');
      let encoding = 'json';
      let bytes = input;
      if (options.raw) encoding = 'binary';
      else if (options.json) {
        try {
          bytes = Buffer.from(JSON.stringify(JSON.parse(input.toString('utf8'))));
        } catch {
          throw new Failure('the value is not valid JSON');
        }
      } else bytes = Buffer.from(JSON.stringify(input.toString('utf8')));
      await withConnection(globals(), true, (c) => c.request(SetItem, { scope: globals().scope, id, value: { encoding, bytes } }));
    });

  program
    .command('delete <id>')
    .description('remove an item')
    .action(async (id: string) => {
      await withConnection(globals(), true, (c) => c.request(Delete, { scope: globals().scope, id }));
    });

  program
    .command('clear')
    .description('remove every item of the scope (everything without --scope)')
    .option('-y, --yes', 'do not ask for confirmation')
    .action(async (options: { yes?: boolean }) => {
      const scope = globals().scope;
      if (scope.length === 0 && !options.yes && process.stdin.isTTY && process.stderr.isTTY) {
        const answer = await confirm('Clear every item in the hoard cache? [y/N] ');
        if (answer === 'interrupted') {
          io.err('\nhoard: interrupted, nothing cleared\n');
          throw new ExitCode(EXIT_INTERRUPTED);
        }
        // After Ctrl-D the cursor is still on the question's line.
        if (answer === 'ended') io.err('\n');
        if (answer !== 'yes') throw new Failure('nothing cleared');
      }
      await withConnection(globals(), true, (c) => c.request(Clear, { scope }));
    });

  return program;
}

/** Runs the CLI with `argv` (without node and script) and resolves to its exit code: 0, 1 or 2. */
export async function runCli(argv: string[], io = { out: (t: string | Uint8Array) => void process.stdout.write(t), err: (t: string) => void process.stderr.write(t) }): Promise<number> {
  const program = buildProgram(io);
  if (argv.length === 0) {
    // No command is a usage error: say which commands there are, on stderr.
    io.err(program.helpInformation());
    return 2;
  }
  try {
    await program.parseAsync(argv, { from: 'user' });
    return 0;
  } catch (error) {
    // First: InvalidArgumentError is a CommanderError too, and one thrown by an action has not been printed yet.
    if (error instanceof InvalidArgumentError) {
      io.err(`hoard: ${error.message}\n`);
      return 2;
    }
    if (error instanceof CommanderError) {
      if (error.code === 'commander.helpDisplayed' || error.code === 'commander.version' || error.code === 'commander.help') return 0;
      return 2;
    }
    if (error instanceof ExitCode) return error.code;
    if (error instanceof Failure || isCacheError(error)) {
      io.err(`hoard: ${(error as Error).message}\n`);
      return 1;
    }
    io.err(`hoard: unexpected error: ${error instanceof Error ? error.stack : String(error)}\n`);
    return 1;
  }
}
