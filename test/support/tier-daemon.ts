import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { onTestFinished } from 'vitest';
import { connect, type RemoteCache, type StatusResult } from '../../client/index.js';
import { scopeOf, itemKey } from '../../src/scope-path.js';
import type { TierStatus } from '../../src/shared-tier.js';
import { TierKeys } from '../../daemon/tier-keys.js';
import { type DaemonProcess, startDaemonProcess, waitForExit } from './processes.js';

/** How to start a daemon with a shared tier: what `hoard daemon`'s tier flags and environment say. */
export interface TierDaemonOptions {
  /** `--tier`: a URL, or a cluster's seed URLs. */
  tier: string | readonly string[];
  /** `--tier-cluster`. */
  cluster?: boolean;
  /** `--share` values (`name=sharing`); `['*=shared']` unless given. */
  share?: readonly string[];
  leaseMs?: number;
  timeoutMs?: number;
  strict?: boolean;
  keyPrefix?: string;
  maxLogEntries?: number;
  maxValueBytes?: number;
  /** Sent as HOARD_TIER_USERNAME / HOARD_TIER_PASSWORD, never on the command line. */
  username?: string;
  password?: string;
  /** The directory holding the socket and data directory: given to restart a daemon on the same data. */
  dir?: string;
  extra?: string[];
}

export interface TierDaemon extends DaemonProcess {
  /** Where its socket and data directory are (pass it as `dir` to start another daemon on the same data). */
  dir: string;
  pid: number;
  /** A connection for the test's own reads and status calls. */
  cache: RemoteCache<unknown>;
  /** `daemon/status`'s `tier`. */
  tierStatus(): Promise<TierStatus>;
  /** SIGSTOP and SIGCONT: a daemon frozen as on a machine that stopped answering. */
  pause(): void;
  resume(): void;
  /** SIGKILL, resolving once it is gone. */
  kill(): Promise<void>;
}

/**
 * Tier settings for tests of a healthy tier: on a machine busy with other work (the suite runs beside two CPU-bound
 * processes, and starts dozens of its own), a command can wait past the default 1 s timeout for CPU alone, and a tier
 * that times out degrades and falls back, by design. A timeout that only a dead tier reaches keeps such a test about
 * what it tests (under a load of 12 on 2 cores, compute once saw a p99 of 4 s). The lease is three timeouts long: it is
 * renewed every third of it.
 */
export const HEALTHY_TIER = Object.freeze({ timeoutMs: 10_000, leaseMs: 30_000 });

/** The daemon's flags for `options`, apart from the socket and data directory. */
export function tierFlags(options: TierDaemonOptions): string[] {
  const urls = typeof options.tier === 'string' ? [options.tier] : options.tier;
  const flags = urls.flatMap((url) => ['--tier', url]);
  if (options.cluster) flags.push('--tier-cluster');
  for (const share of options.share ?? ['*=shared']) flags.push('--share', share);
  if (options.leaseMs !== undefined) flags.push('--tier-lease', `${options.leaseMs}ms`);
  if (options.timeoutMs !== undefined) flags.push('--tier-timeout', `${options.timeoutMs}ms`);
  if (options.strict) flags.push('--tier-strict');
  if (options.keyPrefix !== undefined) flags.push('--tier-prefix', options.keyPrefix);
  if (options.maxLogEntries !== undefined) flags.push('--tier-log-length', String(options.maxLogEntries));
  if (options.maxValueBytes !== undefined) flags.push('--tier-max-value', String(options.maxValueBytes));
  return flags;
}

/**
 * Starts `hoard daemon` with a shared tier as a child process, on a socket and data directory of its own (a machine
 * of its own, as far as the tier can tell), and connects to it. Killed when the test finishes.
 */
export async function startTierDaemon(options: TierDaemonOptions): Promise<TierDaemon> {
  let dir = options.dir;
  if (dir === undefined) {
    const made = await mkdtemp(join(tmpdir(), 'htd-'));
    dir = made;
    onTestFinished(() => rm(made, { recursive: true, force: true }));
  }
  const env: NodeJS.ProcessEnv = {};
  if (options.username !== undefined) env.HOARD_TIER_USERNAME = options.username;
  if (options.password !== undefined) env.HOARD_TIER_PASSWORD = options.password;
  const started = await startDaemonProcess({
    socketPath: join(dir, 's.sock'),
    dataDir: join(dir, 'data'),
    extra: [...tierFlags(options), ...(options.extra ?? [])],
    env,
  });
  const pid = started.child.pid!;
  const cache = await connect({ socketPath: started.socketPath, autoStart: false, clientName: 'tier test' });
  onTestFinished(async () => {
    await cache.close().catch(() => {});
  });
  return {
    ...started,
    dir,
    pid,
    cache,
    async tierStatus() {
      const status = (await cache.status()) as StatusResult & { tier?: TierStatus | null };
      if (status.tier === undefined || status.tier === null) throw new Error(`daemon ${pid} reports no tier: ${JSON.stringify(status)}`);
      return status.tier;
    },
    pause: () => process.kill(pid, 'SIGSTOP'),
    resume: () => process.kill(pid, 'SIGCONT'),
    async kill() {
      started.child.kill('SIGKILL');
      await waitForExit(pid);
    },
  };
}

/** What `redis-cli --no-raw` printed for a string reply: the string, or `undefined` for `(nil)`. */
export function unquoteReply(line: string): string | undefined {
  if (line === '(nil)') return undefined;
  // A quoted string with C escapes (`\xNN` for other bytes, `\a`): JSON but for those.
  return JSON.parse(
    line
      .replace(/^\s*\d+\)\s*/, '')
      .replace(/\\(x[0-9a-f]{2}|a|.)/g, (escape, what: string) => (what === 'a' ? '\\u0007' : what.length === 3 ? `\\u00${what.slice(1)}` : escape)),
  ) as string;
}

/** The Redis key of an item's shared copy. */
export function sharedKey(options: { scope: readonly string[]; id: string; keyPrefix?: string }): string {
  return new TierKeys(options.keyPrefix ?? 'hoard').item(itemKey(scopeOf(options.scope), options.id));
}

/** The shared copies' value bytes (`v`) of many items, as text, through one `redis-cli`; `undefined` where there is none. */
export async function sharedValues(
  pipeline: (commands: readonly (readonly string[])[]) => Promise<string[]>,
  items: readonly { scope: readonly string[]; id: string; keyPrefix?: string }[],
): Promise<(string | undefined)[]> {
  return (await pipeline(items.map((item) => ['HGET', sharedKey(item), 'v']))).map(unquoteReply);
}

/**
 * The shared copy of an item as Redis holds it (`HGETALL` of its hash: `v` value, `f` fencing number, `d` on a
 * tombstone, ...), read with `redis-cli`; `undefined` when there is no such hash.
 */
export async function sharedItem(
  cli: (...args: string[]) => Promise<string>,
  options: { scope: readonly string[]; id: string; keyPrefix?: string },
): Promise<Record<string, string> | undefined> {
  const text = await cli('--no-raw', 'HGETALL', sharedKey(options));
  if (text === '' || text === '(empty array)') return undefined;
  const strings = text.split('\n').map((line) => unquoteReply(line)!);
  const hash: Record<string, string> = {};
  for (let at = 0; at + 1 < strings.length; at += 2) hash[strings[at]!] = strings[at + 1]!;
  return hash;
}
