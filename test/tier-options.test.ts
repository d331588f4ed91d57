import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, test } from 'vitest';
import { type TierFlags, tierOptions, TierOptionsError } from '../daemon/tier-options.js';
import { tempDir } from './support/temp-dir.js';

/** The options, or the refusal's message. */
function parse(flags: TierFlags, env: Record<string, string> = {}): ReturnType<typeof tierOptions> {
  return tierOptions(flags, env);
}

function refusal(flags: TierFlags, env: Record<string, string> = {}): string {
  try {
    parse(flags, env);
  } catch (error) {
    expect(error).toBeInstanceOf(TierOptionsError);
    return (error as Error).message;
  }
  throw new Error('expected a refusal');
}

describe('the tier options: flags and environment', () => {
  test('no tier: undefined, and no tier flag makes sense without one', () => {
    expect(parse({})).toBeUndefined();
    expect(parse({}, { HOARD_TIER_USERNAME: 'u' })).toBeUndefined();
    for (const flags of [{ share: ['*=shared'] }, { tierStrict: true }, { tierLease: '5s' }, { tierCluster: true }, { tierPrefix: 'x' }] as TierFlags[]) {
      expect(refusal(flags)).toMatch(/needs a shared tier: give its URL with --tier <url> or HOARD_TIER/);
    }
    expect(refusal({}, { HOARD_TIER_SHARE: 'pages=shared' })).toMatch(/^HOARD_TIER_SHARE needs a shared tier/);
  });

  test('defaults, and every flag read', () => {
    expect(parse({ tier: ['redis://127.0.0.1:6379'] })).toEqual({
      urls: ['redis://127.0.0.1:6379'],
      cluster: false,
      sharing: { '*': 'local' },
      strict: false,
      leaseMs: 10_000,
      timeoutMs: 1000,
      maxValueBytes: 1024 * 1024,
      keyPrefix: 'hoard',
      maxLogEntries: 10_000,
    });
    const options = parse({
      tier: ['redis://a:7000,redis://b:7001', 'redis://c:7002'],
      tierCluster: true,
      share: ['pages=shared', 'ci=shared-read', '*=shared', 'a=b=local'],
      tierStrict: true,
      tierLease: '3s',
      tierTimeout: '250ms',
      tierMaxValue: '64KiB',
      tierPrefix: 'team:hoard',
      tierLogLength: '500',
      tierMaxPending: '50',
    })!;
    expect(options).toEqual({
      urls: ['redis://a:7000', 'redis://b:7001', 'redis://c:7002'],
      cluster: true,
      sharing: { '*': 'shared', pages: 'shared', ci: 'shared-read', 'a=b': 'local' },
      strict: true,
      leaseMs: 3000,
      timeoutMs: 250,
      maxValueBytes: 64 * 1024,
      keyPrefix: 'team:hoard',
      maxLogEntries: 500,
      maxPendingChanges: 50,
    });
    // A scope named like an object's property is a name like any other.
    expect(Object.getPrototypeOf(options.sharing)).toBeNull();
    expect(options.sharing.constructor).toBeUndefined();
    expect(Object.isFrozen(options.sharing)).toBe(true);
  });

  test('a short lease without a timeout of its own gets a third of it as its timeout', () => {
    expect(parse({ tier: ['redis://a'], tierLease: '300ms' })).toMatchObject({ leaseMs: 300, timeoutMs: 100 });
    expect(parse({ tier: ['redis://a'], tierLease: '1h' })).toMatchObject({ leaseMs: 3_600_000, timeoutMs: 1000 });
  });

  test('the environment: a URL with credentials, the sharing list; flags win over it', () => {
    const env = { HOARD_TIER: 'rediss://runner:s%3Acret@redis.example:6380/2', HOARD_TIER_SHARE: 'pages=shared, ci=shared-read' };
    expect(parse({}, env)).toMatchObject({
      urls: ['rediss://redis.example:6380/2'],
      username: 'runner',
      password: 's:cret',
      sharing: { '*': 'local', pages: 'shared', ci: 'shared-read' },
    });
    // The variables for the user name and password win over the URL's.
    expect(parse({}, { ...env, HOARD_TIER_USERNAME: 'other', HOARD_TIER_PASSWORD: 'p' })).toMatchObject({ username: 'other', password: 'p' });
    // --tier replaces HOARD_TIER; a --share replaces HOARD_TIER_SHARE's entry for its name.
    const both = parse({ tier: ['unix:///run/redis/redis.sock'], share: ['ci=shared'] }, env)!;
    expect(both.urls).toEqual(['unix:///run/redis/redis.sock']);
    expect(both.username).toBeUndefined();
    expect(both.sharing).toEqual({ '*': 'local', pages: 'shared', ci: 'shared' });
    expect(parse({ tier: ['redis://runner@host'] }, { HOARD_TIER_PASSWORD: 'p' })).toMatchObject({ urls: ['redis://host'], username: 'runner', password: 'p' });
  });

  test('a password on the command line is refused, naming the environment instead, and never echoed', () => {
    for (const url of ['redis://user:hunter2@host:6379', 'redis://:hunter2@host', 'rediss://a:hunter2@h1,rediss://h2']) {
      const message = refusal({ tier: [url], tierCluster: true });
      expect(message).toMatch(/^--tier: the URL carries a password.*HOARD_TIER_PASSWORD/);
      expect(message).not.toContain('hunter2');
    }
  });

  test('bad URLs, sharing and values are refused with what is expected', () => {
    const cases: [TierFlags, RegExp][] = [
      [{ tier: ['localhost:6379'] }, /^--tier: "localhost:6379": expected redis:\/\/, rediss:\/\/ or unix:\/\//],
      [{ tier: ['http://host'] }, /expected redis:\/\/, rediss:\/\/ or unix:\/\/ \(not http:\/\/\)/],
      [{ tier: ['not a url'] }, /is not a URL; expected redis:\/\/\[user@\]host/],
      [{ tier: ['redis://host/x'] }, /the path is the database number/],
      [{ tier: ['redis://host?x=1'] }, /has a query or fragment/],
      [{ tier: ['unix://relative/sock'] }, /a Unix socket is written unix:\/\/\/absolute\/path/],
      [{ tier: ['redis://a', 'redis://b'] }, /several URLs are the seed nodes of a Redis Cluster: add --tier-cluster/],
      [{ tier: ['unix:///tmp/r.sock'], tierCluster: true }, /a Redis Cluster is reached over TCP/],
      [{ tier: ['redis://a/1'], tierCluster: true }, /a Redis Cluster has database 0 only/],
      [{ tier: ['redis://a', 'rediss://b'], tierCluster: true }, /all redis:\/\/ or all rediss:\/\//],
      [{ tier: ['redis://a'], share: ['pages=everywhere'] }, /^--share: unknown sharing "everywhere" for "pages"; expected local, shared-read or shared\.$/],
      [{ tier: ['redis://a'], share: ['pages'] }, /^--share: expected <scope>=<local\|shared-read\|shared>/],
      [{ tier: ['redis://a'], share: ['=shared'] }, /^--share: expected <scope>=/],
      [{ tier: ['redis://a'], tierLease: 'soon' }, /^--tier-lease: expected a duration above 0/],
      [{ tier: ['redis://a'], tierTimeout: '0' }, /^--tier-timeout: expected a duration above 0/],
      [{ tier: ['redis://a'], tierLease: '2s', tierTimeout: '1s' }, /--tier-lease \(2000 ms\) must be at least 3 times --tier-timeout \(1000 ms\)/],
      [{ tier: ['redis://a'], tierMaxValue: '1TiB' }, /^--tier-max-value: expected a size from 1 byte to 512MiB/],
      [{ tier: ['redis://a'], tierMaxValue: 'big' }, /^--tier-max-value: expected a size such as/],
      [{ tier: ['redis://a'], tierPrefix: 'a{b}' }, /^--tier-prefix: expected 1 to 64 printable ASCII characters without spaces or braces/],
      [{ tier: ['redis://a'], tierPrefix: 'a b' }, /^--tier-prefix/],
      [{ tier: ['redis://a'], tierLogLength: '0' }, /^--tier-log-length: expected a whole number of entries, at least 1/],
    ];
    for (const [flags, expected] of cases) expect(refusal(flags), JSON.stringify(flags)).toMatch(expected);
    expect(refusal({}, { HOARD_TIER: 'redis://h', HOARD_TIER_SHARE: 'pages=all' })).toMatch(/^HOARD_TIER_SHARE: unknown sharing "all"/);
    expect(refusal({}, { HOARD_TIER: 'ftp://h' })).toMatch(/^HOARD_TIER: "ftp:\/\/h"/);
  });

  test('--tier-ca (or HOARD_TIER_CA) reads a PEM file for a rediss:// tier; the flag wins; anything else is refused', async () => {
    const dir = await tempDir('hoard-ca-');
    const pem = '-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n';
    await writeFile(join(dir, 'ca.pem'), pem);
    await writeFile(join(dir, 'other.pem'), pem.replace('MIIB', 'MIIC'));
    await writeFile(join(dir, 'key.pem'), '-----BEGIN PRIVATE KEY-----\n');
    expect(parse({ tier: ['rediss://h'], tierCa: join(dir, 'ca.pem') })).toMatchObject({ ca: pem });
    expect(parse({ tier: ['rediss://h'] }, { HOARD_TIER_CA: join(dir, 'ca.pem') })).toMatchObject({ ca: pem });
    expect(parse({ tier: ['rediss://h'], tierCa: join(dir, 'other.pem') }, { HOARD_TIER_CA: join(dir, 'ca.pem') })?.ca).toContain('MIIC');
    expect(parse({ tier: ['rediss://h'] })).not.toHaveProperty('ca');
    expect(refusal({ tier: ['redis://h'], tierCa: join(dir, 'ca.pem') })).toMatch(/^--tier-ca: a CA is for a TLS tier \(rediss:\/\/\)/);
    expect(refusal({ tier: ['rediss://h'], tierCa: join(dir, 'none.pem') })).toMatch(/^--tier-ca: cannot read ".*none\.pem"/);
    expect(refusal({ tier: ['rediss://h'] }, { HOARD_TIER_CA: join(dir, 'key.pem') })).toMatch(/^HOARD_TIER_CA: ".*key\.pem" holds no PEM certificate/);
    expect(refusal({ tierCa: join(dir, 'ca.pem') })).toMatch(/^--tier-ca needs a shared tier/);
  });
});
