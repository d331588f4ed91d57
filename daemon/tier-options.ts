import { readFileSync } from 'node:fs';
import { parseDuration } from '../src/parse-duration.js';
import { parseSize } from '../src/parse-size.js';
import type { ScopeSharing } from '../src/shared-tier.js';

/** How the daemon reaches its shared tier, and what it shares: see README's "Sharing beyond one machine". */
export interface TierOptions {
  /**
   * Where Redis is, without credentials: `redis://host[:port][/db]`, `rediss://…` (TLS) or `unix:///path/redis.sock`;
   * with {@link TierOptions.cluster}, the seed nodes of a Redis Cluster (several, all `redis://` or all `rediss://`).
   */
  urls: string[];
  cluster: boolean;
  username?: string;
  password?: string;
  /** The CA certificates (PEM) that a `rediss://` tier's certificates are checked against, instead of Node's trusted CAs. */
  ca?: string;
  /**
   * The sharing of each named top-level scope, and under `*` that of every other one (`local` unless given); a
   * null-prototype object, so that a scope named like an object's property (`constructor`) is looked up as any other.
   */
  sharing: Readonly<Record<string, ScopeSharing>>;
  /** Whether a failed shared write fails the call (`CACHE_TIER_UNAVAILABLE`) instead of being counted. */
  strict: boolean;
  leaseMs: number;
  timeoutMs: number;
  /** Values larger than this stay local (the shared copy is deleted instead). */
  maxValueBytes: number;
  keyPrefix: string;
  /** How many entries each top-level scope's change log keeps, about (`XADD … MAXLEN ~`). */
  maxLogEntries: number;
  /**
   * How many changes Redis did not take are remembered one by one (items and cleared scopes, in all), to be written
   * through later; past it, the top-level scope holding the most is written through whole. Default 10,000.
   */
  maxPendingChanges?: number;
}

/** The tier's settings as the command line gives them, unparsed (see `daemon/main.ts`). */
export interface TierFlags {
  tier?: readonly string[] | undefined;
  tierCluster?: boolean | undefined;
  share?: readonly string[] | undefined;
  tierStrict?: boolean | undefined;
  tierLease?: string | undefined;
  tierTimeout?: string | undefined;
  tierMaxValue?: string | undefined;
  tierPrefix?: string | undefined;
  tierLogLength?: string | undefined;
  tierMaxPending?: string | undefined;
  tierCa?: string | undefined;
}

export const TIER_LEASE_MS = 10_000;
export const TIER_TIMEOUT_MS = 1000;
export const TIER_MAX_VALUE_BYTES = 1024 * 1024;
export const TIER_KEY_PREFIX = 'hoard';
export const TIER_LOG_ENTRIES = 10_000;
/** Redis refuses a bulk string over 512 MiB (`proto-max-bulk-len`). */
const MAX_VALUE_BYTES_CEILING = 512 * 1024 * 1024;
const MAX_PREFIX_LENGTH = 64;
const SHARINGS: readonly ScopeSharing[] = ['local', 'shared-read', 'shared'];

/** A tier setting the daemon will not start with; the message names the flag or variable and says what is expected. */
export class TierOptionsError extends Error {
  override name = 'TierOptionsError';
}

/**
 * The tier's options from the command line and the environment (`HOARD_TIER`, `HOARD_TIER_SHARE`,
 * `HOARD_TIER_USERNAME`, `HOARD_TIER_PASSWORD`, `HOARD_TIER_CA`), with the CA file read; `undefined` when no tier is
 * configured. Flags win over the environment: `--tier` over `HOARD_TIER`, `--tier-ca` over `HOARD_TIER_CA`, a
 * `--share` over `HOARD_TIER_SHARE`'s entry for the same name.
 * Credentials never come from the command line, where `ps` shows them.
 * @throws TierOptionsError for a setting the daemon will not start with.
 */
export function tierOptions(flags: TierFlags, env: Readonly<Record<string, string | undefined>>): TierOptions | undefined {
  const fromFlags = (flags.tier ?? []).flatMap(splitList);
  const fromEnv = splitList(env.HOARD_TIER ?? '');
  const source = fromFlags.length > 0 ? '--tier' : 'HOARD_TIER';
  const given = fromFlags.length > 0 ? fromFlags : fromEnv;
  const shares = [...splitList(env.HOARD_TIER_SHARE ?? '').map((text) => ({ text, from: 'HOARD_TIER_SHARE' })), ...(flags.share ?? []).map((text) => ({ text, from: '--share' }))];
  if (given.length === 0) {
    const orphan = [
      shares.length > 0 && (shares[0]!.from === '--share' ? '--share' : 'HOARD_TIER_SHARE'),
      flags.tierCluster && '--tier-cluster',
      flags.tierStrict && '--tier-strict',
      flags.tierLease !== undefined && '--tier-lease',
      flags.tierTimeout !== undefined && '--tier-timeout',
      flags.tierMaxValue !== undefined && '--tier-max-value',
      flags.tierPrefix !== undefined && '--tier-prefix',
      flags.tierLogLength !== undefined && '--tier-log-length',
      flags.tierMaxPending !== undefined && '--tier-max-pending',
      flags.tierCa !== undefined && '--tier-ca',
      env.HOARD_TIER_CA && 'HOARD_TIER_CA',
    ].find((name) => typeof name === 'string');
    if (orphan) throw new TierOptionsError(`${orphan} needs a shared tier: give its URL with --tier <url> or HOARD_TIER.`);
    return undefined;
  }

  const cluster = flags.tierCluster === true;
  let username: string | undefined;
  let password: string | undefined;
  const urls = given.map((text) => {
    const url = tierUrl(text, source, { cluster });
    if (url.password !== undefined) {
      if (source === '--tier') {
        throw new TierOptionsError(
          '--tier: the URL carries a password, which any user could read in the process list; ' +
            'give the password in HOARD_TIER_PASSWORD (or the whole URL in HOARD_TIER) instead.',
        );
      }
      password ??= url.password;
    }
    if (url.username !== undefined) username ??= url.username;
    return url.url;
  });
  if (urls.length > 1 && !cluster) {
    throw new TierOptionsError(`${source}: several URLs are the seed nodes of a Redis Cluster: add --tier-cluster (or give one URL).`);
  }
  if (cluster && new Set(urls.map((url) => url.slice(0, url.indexOf(':')))).size > 1) {
    throw new TierOptionsError(`${source}: the seed nodes of a cluster are all redis:// or all rediss://.`);
  }
  const ca = caFile(flags.tierCa !== undefined ? { path: flags.tierCa, from: '--tier-ca' } : env.HOARD_TIER_CA ? { path: env.HOARD_TIER_CA, from: 'HOARD_TIER_CA' } : undefined, urls);
  if (env.HOARD_TIER_USERNAME) username = env.HOARD_TIER_USERNAME;
  if (env.HOARD_TIER_PASSWORD) password = env.HOARD_TIER_PASSWORD;

  const sharing: Record<string, ScopeSharing> = Object.create(null) as Record<string, ScopeSharing>;
  sharing['*'] = 'local';
  for (const { text, from } of shares) {
    const { name, mode } = shareEntry(text, from);
    sharing[name] = mode;
  }

  const leaseMs = duration(flags.tierLease, '--tier-lease', TIER_LEASE_MS);
  // A lease is renewed every third of its time: a renewal that times out once still leaves time for the next. A short
  // lease without a timeout of its own gets a third of it.
  const timeoutMs = duration(flags.tierTimeout, '--tier-timeout', Math.min(TIER_TIMEOUT_MS, Math.floor(leaseMs / 3)));
  if (leaseMs < 3 * timeoutMs) {
    throw new TierOptionsError(
      `--tier-lease (${leaseMs} ms) must be at least 3 times --tier-timeout (${timeoutMs} ms), so that a held lease is renewed before it runs out.`,
    );
  }
  return {
    urls,
    cluster,
    ...(username !== undefined && { username }),
    ...(password !== undefined && { password }),
    ...(ca !== undefined && { ca }),
    sharing: Object.freeze(sharing),
    strict: flags.tierStrict === true,
    leaseMs,
    timeoutMs,
    maxValueBytes: maxValue(flags.tierMaxValue),
    keyPrefix: keyPrefix(flags.tierPrefix),
    maxLogEntries: logLength(flags.tierLogLength),
    ...(flags.tierMaxPending !== undefined && { maxPendingChanges: count(flags.tierMaxPending, '--tier-max-pending') }),
  };
}

/** The PEM text of the CA file given, for `rediss://` URLs only; `undefined` when none is given. */
function caFile(given: { path: string; from: string } | undefined, urls: readonly string[]): string | undefined {
  if (given === undefined) return undefined;
  if (!urls[0]!.startsWith('rediss://')) throw new TierOptionsError(`${given.from}: a CA is for a TLS tier (rediss://), and the tier's URL is not one.`);
  let text: string;
  try {
    text = readFileSync(given.path, 'utf8');
  } catch (error) {
    throw new TierOptionsError(`${given.from}: cannot read ${JSON.stringify(given.path)}: ${(error as Error).message}`);
  }
  if (!text.includes('-----BEGIN CERTIFICATE-----')) {
    throw new TierOptionsError(`${given.from}: ${JSON.stringify(given.path)} holds no PEM certificate (-----BEGIN CERTIFICATE-----).`);
  }
  return text;
}

/** The parts of a list given as `a,b` (or repeated), without blanks. */
function splitList(text: string): string[] {
  return text
    .split(',')
    .map((part) => part.trim())
    .filter((part) => part !== '');
}

/**
 * A tier URL checked and written without its credentials, which come back apart (percent-decoding undone).
 * @throws TierOptionsError naming `source` for a URL hoard cannot use.
 */
export function tierUrl(text: string, source: string, options: { cluster: boolean }): { url: string; username?: string; password?: string } {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw new TierOptionsError(`${source}: ${JSON.stringify(redact(text))} is not a URL; expected redis://[user@]host[:port][/db], rediss://… or unix:///path/redis.sock.`);
  }
  const shown = JSON.stringify(redact(text));
  const credentials = {
    ...(url.username !== '' && { username: decodeURIComponent(url.username) }),
    ...(url.password !== '' && { password: decodeURIComponent(url.password) }),
  };
  if (url.search !== '' || url.hash !== '') throw new TierOptionsError(`${source}: ${shown} has a query or fragment, which hoard does not read.`);
  if (url.protocol === 'unix:') {
    if (url.host !== '' || !url.pathname.startsWith('/') || url.pathname === '/') {
      throw new TierOptionsError(`${source}: ${shown}: a Unix socket is written unix:///absolute/path/redis.sock.`);
    }
    if (options.cluster) throw new TierOptionsError(`${source}: a Redis Cluster is reached over TCP (redis:// or rediss://), not a Unix socket.`);
    return { url: `unix://${url.pathname}`, ...credentials };
  }
  if (url.protocol !== 'redis:' && url.protocol !== 'rediss:') {
    throw new TierOptionsError(`${source}: ${shown}: expected redis://, rediss:// or unix:// (not ${url.protocol}//).`);
  }
  if (url.hostname === '') throw new TierOptionsError(`${source}: ${shown} names no host.`);
  const db = url.pathname === '' || url.pathname === '/' ? 0 : /^\/(\d{1,5})$/.exec(url.pathname)?.[1];
  if (db === undefined) throw new TierOptionsError(`${source}: ${shown}: the path is the database number (redis://host:6379/0), not ${JSON.stringify(url.pathname)}.`);
  if (options.cluster && Number(db) !== 0) throw new TierOptionsError(`${source}: ${shown}: a Redis Cluster has database 0 only.`);
  const port = url.port === '' ? '' : `:${url.port}`;
  const path = Number(db) === 0 ? '' : `/${Number(db)}`;
  return { url: `${url.protocol}//${url.hostname}${port}${path}`, ...credentials };
}

/** The URL as a message may show it: a password replaced by `***`. */
function redact(text: string): string {
  return text.replace(/^([a-z][a-z0-9+.-]*:\/\/[^/@:]*):[^/@]*@/i, '$1:***@');
}

function shareEntry(text: string, source: string): { name: string; mode: ScopeSharing } {
  // The mode never holds `=`, so a scope name may.
  const at = text.lastIndexOf('=');
  const name = at < 0 ? '' : text.slice(0, at).trim();
  const mode = at < 0 ? '' : text.slice(at + 1).trim();
  if (at < 0 || name === '') {
    throw new TierOptionsError(`${source}: expected <scope>=<local|shared-read|shared> (* for every scope not named), not ${JSON.stringify(text)}.`);
  }
  if (!(SHARINGS as readonly string[]).includes(mode)) {
    throw new TierOptionsError(`${source}: unknown sharing ${JSON.stringify(mode)} for ${JSON.stringify(name)}; expected local, shared-read or shared.`);
  }
  return { name, mode: mode as ScopeSharing };
}

function duration(text: string | undefined, flag: string, fallback: number): number {
  if (text === undefined) return Math.max(1, fallback);
  const ms = parseDuration(text);
  if (ms === undefined || ms < 1) throw new TierOptionsError(`${flag}: expected a duration above 0 such as 10s, 1500ms or 1m, not ${JSON.stringify(text)}.`);
  return ms;
}

function maxValue(text: string | undefined): number {
  if (text === undefined) return TIER_MAX_VALUE_BYTES;
  let bytes: number;
  try {
    bytes = parseSize(text);
  } catch (error) {
    throw new TierOptionsError(`--tier-max-value: ${(error as Error).message}.`);
  }
  if (bytes < 1 || bytes > MAX_VALUE_BYTES_CEILING) throw new TierOptionsError(`--tier-max-value: expected a size from 1 byte to 512MiB (Redis's largest value), not ${JSON.stringify(text)}.`);
  return bytes;
}

function keyPrefix(text: string | undefined): string {
  if (text === undefined) return TIER_KEY_PREFIX;
  // Braces would change the keys' hash tags, which keep a scope's keys on one shard of a cluster.
  if (!/^[\x21-\x7e]{1,64}$/.test(text) || /[{}]/.test(text)) {
    throw new TierOptionsError(`--tier-prefix: expected 1 to ${MAX_PREFIX_LENGTH} printable ASCII characters without spaces or braces, not ${JSON.stringify(text)}.`);
  }
  return text;
}

function logLength(text: string | undefined): number {
  return text === undefined ? TIER_LOG_ENTRIES : count(text, '--tier-log-length');
}

function count(text: string, flag: string): number {
  const value = Number(text.trim());
  if (!/^\d+$/.test(text.trim()) || !Number.isSafeInteger(value) || value < 1) {
    throw new TierOptionsError(`${flag}: expected a whole number of entries, at least 1, not ${JSON.stringify(text)}.`);
  }
  return value;
}
