import { describe, expect, onTestFinished, test } from 'vitest';
import { CacheError } from '../src/errors.js';
import { LevelStore } from '../src/level/level-store.js';
import { LocalBackend } from '../src/local-backend.js';
import { itemKey, ROOT_SCOPE, type Scope, scopeOf } from '../src/scope-path.js';
import type { ScopeSharing, SharedTier, TierGrant, TierLease, TierRead, TierSink, TierStatus } from '../src/shared-tier.js';
import type { EncodedRecord, EncodedValue } from '../src/store.js';
import { tempDir } from './support/temp-dir.js';

/**
 * LocalBackend's own rules with a shared tier: which calls reach the tier, in which order against the local store,
 * and what a refusal leaves behind. The tier here is a recording one written for these rules (what each call saw of
 * the local store when it came); test/local-backend-redis.test.ts runs the same rules against RedisTier on a real Redis.
 */

const keep = { encode: (value: EncodedValue) => value, decode: (value: EncodedValue) => value };
const text = (value: string): EncodedValue => ({ encoding: 'json', bytes: Buffer.from(JSON.stringify(value)) });
const textOf = (value: EncodedValue | undefined): string | undefined => (value === undefined ? undefined : (JSON.parse(Buffer.from(value.bytes).toString()) as string));
const PAGES = scopeOf(['pages']);
const READS = scopeOf(['reads']);
const OWN = scopeOf(['own']);

class Lease implements TierLease {
  held = true;
  constructor(readonly fence: number) {}
}

/** A SharedTier that keeps its copies in a map and records every call with what the local store held for the item. */
class RecordingTier implements SharedTier<EncodedValue> {
  strict = false;
  readonly calls: string[] = [];
  readonly copies = new Map<string, EncodedRecord>();
  /** What `copyable()` answers, and how often it was asked. */
  copyableAnswer = true;
  copyableAsked = 0;
  /** How the next writes, deletes and clears fail: `fenced` only with a lease. */
  failure: 'unavailable' | 'fenced' | undefined;
  /** What `acquire` answers. */
  acquireAnswer: 'grant' | 'busy' | null = 'grant';
  /** Resolves the pending `acquire` when set: the test holds an acquire in flight with it. */
  holdAcquire: Promise<void> | undefined;
  /** The same for `read`. */
  holdRead: Promise<void> | undefined;
  sink: TierSink | undefined;
  closed = false;
  #fence = 0;
  readonly #sharing: Readonly<Record<string, ScopeSharing>>;
  readonly #local: () => { store: LevelStore; backend: LocalBackend<EncodedValue, EncodedValue> };

  constructor(sharing: Record<string, ScopeSharing>, local: () => { store: LevelStore; backend: LocalBackend<EncodedValue, EncodedValue> }) {
    this.#sharing = sharing;
    this.#local = local;
  }

  /** The local copy's value when the call came, and how many local locks were held. */
  #seen(scope: Scope, id: string): string {
    const { store, backend } = this.#local();
    return `local=${textOf(store.read(scope, id)?.value) ?? '-'} locks=${backend.lockStats().held}`;
  }

  #read(record: EncodedRecord | undefined): TierRead<EncodedValue> {
    return {
      record,
      copyable: () => {
        this.copyableAsked++;
        return this.copyableAnswer;
      },
    };
  }

  #fail(): void {
    if (this.failure === 'unavailable' && this.strict) throw new CacheError('CACHE_TIER_UNAVAILABLE', 'The tier failed.');
  }

  sharing(scope: Scope): ScopeSharing {
    this.calls.push(`sharing ${scope.path.join('/')}`);
    return this.#sharing[scope.path[0] ?? ''] ?? this.#sharing['*'] ?? 'local';
  }

  async read(scope: Scope, id: string): Promise<TierRead<EncodedValue> | null> {
    this.calls.push(`read ${id} ${this.#seen(scope, id)}`);
    await this.holdRead;
    if (this.failure === 'unavailable') return null;
    return this.#read(this.copies.get(itemKey(scope, id)));
  }

  async write(scope: Scope, id: string, record: EncodedRecord, options: { lease?: TierLease; sizeBytes: number }): Promise<void> {
    this.calls.push(`write ${id}=${textOf(record.value)}${options.lease ? ` fence ${options.lease.fence}` : ''} size ${options.sizeBytes} ${this.#seen(scope, id)}`);
    if (this.failure === 'fenced' && options.lease) throw new CacheError('CACHE_LEASE_LOST', 'The lease was lost.');
    this.#fail();
    if (this.failure === undefined) this.copies.set(itemKey(scope, id), record);
  }

  async delete(scope: Scope, id: string): Promise<void> {
    this.calls.push(`delete ${id} ${this.#seen(scope, id)}`);
    this.#fail();
    if (this.failure === undefined) this.copies.delete(itemKey(scope, id));
  }

  async clear(scope: Scope): Promise<void> {
    this.calls.push(`clear ${scope.path.join('/')}`);
    this.#fail();
    if (this.failure === undefined) for (const key of [...this.copies.keys()]) if (key.startsWith(scope.prefix)) this.copies.delete(key);
  }

  async acquire(scope: Scope, id: string, options: { wait: boolean; signal?: AbortSignal | undefined }): Promise<TierGrant<EncodedValue> | 'busy' | null> {
    this.calls.push(`acquire ${id} wait=${options.wait} ${this.#seen(scope, id)}`);
    if (this.holdAcquire) {
      const { signal } = options;
      await Promise.race([
        this.holdAcquire,
        new Promise((_, reject) => signal?.addEventListener('abort', () => reject(signal.reason as Error), { once: true })),
      ]);
    }
    if (this.acquireAnswer !== 'grant') return this.acquireAnswer;
    return { ...this.#read(this.copies.get(itemKey(scope, id))), lease: new Lease(++this.#fence) };
  }

  async release(lease: TierLease): Promise<void> {
    (lease as Lease).held = false;
    this.calls.push(`release fence ${lease.fence} locks=${this.#local().backend.lockStats().held}`);
  }

  async attach(sink: TierSink): Promise<void> {
    this.calls.push('attach');
    this.sink = sink;
  }

  status(): TierStatus {
    throw new TypeError('not used here');
  }

  async close(): Promise<void> {
    this.calls.push('close');
    this.closed = true;
  }

  /** The calls so far, and forgets them. */
  take(): string[] {
    return this.calls.splice(0);
  }
}

/** A LocalBackend on a LevelStore in a fresh directory, with a recording tier; closed when the test ends. */
async function open(
  sharing: Record<string, ScopeSharing> = { pages: 'shared', reads: 'shared-read' },
  options: { maxSizeBytes?: number } = {},
): Promise<{ backend: LocalBackend<EncodedValue, EncodedValue>; store: LevelStore; tier: RecordingTier }> {
  const store = await LevelStore.open(await tempDir('tier-backend-'), { maxSizeBytes: options.maxSizeBytes ?? Infinity });
  const tier: RecordingTier = new RecordingTier(sharing, () => ({ store, backend }));
  const backend = new LocalBackend<EncodedValue, EncodedValue>(store, keep, { tier });
  onTestFinished(() => backend.close());
  await backend.openTier();
  tier.take();
  return { backend, store, tier };
}

const at = { modified: 1_700_000_000 };

describe('LocalBackend with a shared tier', () => {
  test('local hits never call the tier: readNow, get and getset of an item held locally, in a shared scope', async () => {
    const { backend, store, tier } = await open();
    await store.write(PAGES, 'a', { modified: 1, value: text('local') });
    await store.write(PAGES, 'expiring', { modified: 1, value: text('soon'), expiresAtMs: Date.now() + 3_600_000 });
    for (const id of ['a', 'expiring']) {
      const now = backend.readNow(PAGES, id)!;
      expect(now.record).toBeDefined();
      now.lease.release();
      const got = await backend.get(PAGES, id, {});
      expect(got!.item).not.toBeNull();
      await got!.release();
      const gs = await backend.getset(PAGES, id, { wait: true });
      expect(gs.item).not.toBeNull();
      await gs.release();
    }
    expect(tier.calls).toEqual([]);
  });

  test('a miss in a shared scope: readNow lets go and says to read later; get reads the tier and keeps its copy', async () => {
    const { backend, store, tier } = await open();
    tier.copies.set(itemKey(PAGES, 'a'), { modified: 5, value: text('shared'), expiresAtMs: Date.now() + 3_600_000, staleUntilMs: Date.now() + 7_200_000 });
    expect(backend.readNow(PAGES, 'a')).toBeUndefined();
    expect(backend.lockStats()).toEqual({ held: 0, waiting: 0 });
    expect(tier.take()).toEqual(['sharing pages']);

    const got = (await backend.get(PAGES, 'a', {}))!;
    expect(textOf(await got.item!.value())).toBe('shared');
    // The copy is there before the handle is handed out, with the writer's modified and expiry.
    const copy = store.read(PAGES, 'a')!;
    expect(copy).toMatchObject({ modified: 5, expiresAtMs: tier.copies.get(itemKey(PAGES, 'a'))!.expiresAtMs, staleUntilMs: tier.copies.get(itemKey(PAGES, 'a'))!.staleUntilMs });
    await got.release();
    expect(tier.take()).toEqual(['sharing pages', 'read a local=- locks=1']);
    expect(tier.copyableAsked).toBe(1);
    // From now on a local hit: no tier.
    const now = backend.readNow(PAGES, 'a')!;
    expect(textOf(now.record!.value)).toBe('shared');
    now.lease.release();
    expect(tier.take()).toEqual([]);
  });

  test('a miss in a local scope stays local: readNow answers at once, the tier is asked only its sharing', async () => {
    const { backend, tier } = await open();
    const now = backend.readNow(OWN, 'a')!;
    expect(now.record).toBeUndefined();
    now.lease.release();
    expect(tier.take()).toEqual(['sharing own']);
  });

  test('a read whose copy is no longer copyable serves the shared value without keeping it', async () => {
    const { backend, store, tier } = await open();
    tier.copies.set(itemKey(PAGES, 'a'), { modified: 5, value: text('shared') });
    tier.copyableAnswer = false;
    const got = (await backend.get(PAGES, 'a', {}))!;
    expect(textOf(await got.item!.value())).toBe('shared');
    await got.release();
    expect(store.read(PAGES, 'a')).toBeUndefined();
    expect(tier.copyableAsked).toBe(1);
  });

  test('readers missing the same item at once keep one copy: the store counts it once, with no stray file', async () => {
    const { backend, store, tier } = await open();
    // A value large enough to be a file of its own, which two writes of one key at once would leave behind.
    tier.copies.set(itemKey(PAGES, 'big'), { modified: 5, value: text('x'.repeat(100_000)) });
    let letGo!: () => void;
    tier.holdRead = new Promise((resolve) => (letGo = resolve));
    const readers = Array.from({ length: 5 }, () => backend.get(PAGES, 'big', {}));
    await expect.poll(() => tier.calls.filter((call) => call.startsWith('read')).length).toBe(5);
    letGo();
    for (const got of await Promise.all(readers)) {
      expect(textOf(await got!.item!.value())).toHaveLength(100_000);
      await got!.release();
    }
    expect(store.usage().items).toBe(1);
    const report = await store.verify({ fix: false });
    expect(report).toMatchObject({ driftedScopes: [], orphanFiles: 0, strayEntries: 0 });
    expect(report.kept).toEqual(report.counted);
  });

  test('an expired shared copy is a miss for get and stale for getset, and is not kept', async () => {
    const { backend, store, tier } = await open();
    tier.copies.set(itemKey(PAGES, 'a'), { modified: 5, value: text('old'), expiresAtMs: Date.now() - 1000, staleUntilMs: Date.now() + 60_000 });
    const got = (await backend.get(PAGES, 'a', {}))!;
    expect(got.item).toBeNull();
    await got.release();
    const gs = await backend.getset(PAGES, 'a', { wait: true });
    expect(gs.item).toBeNull();
    expect(textOf(await gs.stale!.value())).toBe('old');
    await gs.release();
    expect(store.read(PAGES, 'a')).toBeUndefined();
  });

  test('the read-through copy counts toward the size limit: one larger than the limit is served without a copy', async () => {
    const { backend, store, tier } = await open({ pages: 'shared' }, { maxSizeBytes: 2000 });
    tier.copies.set(itemKey(PAGES, 'big'), { modified: 5, value: text('x'.repeat(5000)) });
    const got = (await backend.get(PAGES, 'big', {}))!;
    expect(textOf(await got.item!.value())).toHaveLength(5000);
    await got.release();
    expect(store.read(PAGES, 'big')).toBeUndefined();
    expect(store.usage().bytes).toBe(0);
  });

  test('set in a shared scope: by default the local write first, then the tier, and the call waits for it', async () => {
    const { backend, tier } = await open();
    await backend.set(PAGES, 'a', text('v1'), at);
    expect(tier.take()).toEqual(['sharing pages', `write a=v1 size 4 local=v1 locks=1`]);
    await backend.delete(PAGES, 'a');
    expect(tier.take()).toEqual(['sharing pages', 'delete a local=- locks=1']);
    await backend.set(PAGES, 'b', text('v2'), at);
    tier.take();
    await backend.clear(PAGES);
    expect(tier.take()).toEqual(['sharing pages', 'clear pages']);
    // A failure of the tier is the tier's to count: the call succeeds, the local write stands.
    tier.failure = 'unavailable';
    await backend.set(PAGES, 'c', text('v3'), at);
    expect(textOf(backend.readNow(PAGES, 'c')?.record?.value)).toBe('v3');
  });

  test('strict: the tier first, and a tier failure fails the call with CACHE_TIER_UNAVAILABLE, the new value written nowhere', async () => {
    const { backend, store, tier } = await open();
    tier.strict = true;
    await backend.set(PAGES, 'a', text('v1'), at);
    expect(tier.take()).toEqual(['sharing pages', 'write a=v1 size 4 local=- locks=1']);
    expect(textOf(store.read(PAGES, 'a')?.value)).toBe('v1');

    tier.failure = 'unavailable';
    await expect(backend.set(PAGES, 'a', text('v2'), at)).rejects.toMatchObject({ code: 'CACHE_TIER_UNAVAILABLE' });
    // The tier was asked first, and the local copy was not replaced with v2. It was dropped, though: a write that timed
    // out may still reach Redis later, and then no local copy may go on serving v1.
    expect(tier.take()).toEqual(['sharing pages', 'write a=v2 size 4 local=v1 locks=1']);
    expect(store.read(PAGES, 'a')).toBeUndefined();
    await store.write(PAGES, 'b', { modified: 1, value: text('b') });
    await expect(backend.delete(PAGES, 'b')).rejects.toMatchObject({ code: 'CACHE_TIER_UNAVAILABLE' });
    await expect(backend.clear(PAGES)).rejects.toMatchObject({ code: 'CACHE_TIER_UNAVAILABLE' });
    expect(tier.take()).toEqual(['sharing pages', 'delete b local=b locks=1', 'sharing pages', 'clear pages']);
    expect(backend.lockStats()).toEqual({ held: 0, waiting: 0 });
    // The tier's copy is what a read finds now.
    tier.failure = undefined;
    const got = (await backend.get(PAGES, 'a', {}))!;
    expect(textOf(await got.item!.value())).toBe('v1');
    await got.release();
  });

  test('strict: a local write refused after the tier took it drops the old local copy, which the tier no longer vouches for', async () => {
    const { backend, store, tier } = await open({ pages: 'shared' }, { maxSizeBytes: 2000 });
    tier.strict = true;
    await backend.set(PAGES, 'a', text('small'), at);
    await expect(backend.set(PAGES, 'a', text('x'.repeat(5000)), at)).rejects.toMatchObject({ code: 'CACHE_OVER_SIZE_LIMIT' });
    expect(store.read(PAGES, 'a')).toBeUndefined();
  });

  test('shared-read: writes stay local and never reach the tier; a miss reads through', async () => {
    const { backend, store, tier } = await open();
    await backend.set(READS, 'a', text('mine'), at);
    await backend.delete(READS, 'a');
    await backend.clear(READS);
    expect(tier.take()).toEqual(['sharing reads', 'sharing reads', 'sharing reads']);
    tier.copies.set(itemKey(READS, 'b'), { modified: 5, value: text('theirs') });
    const gs = await backend.getset(READS, 'b', { wait: true });
    expect(textOf(await gs.item!.value())).toBe('theirs');
    await gs.set!(text('computed'));
    await gs.release();
    expect(tier.take()).toEqual(['sharing reads', 'read b local=- locks=1', 'sharing reads']);
    expect(textOf(store.read(READS, 'b')?.value)).toBe('computed');
  });

  test('getset miss in a shared scope: the lease after the local lock, its copy kept, its write fenced and first, its release before the lock', async () => {
    const { backend, store, tier } = await open();
    tier.copies.set(itemKey(PAGES, 'a'), { modified: 5, value: text('shared'), expiresAtMs: Date.now() - 1000, staleUntilMs: Date.now() + 60_000 });
    const gs = await backend.getset(PAGES, 'a', { wait: true });
    expect(gs.item).toBeNull();
    expect(textOf(await gs.stale!.value())).toBe('shared');
    await gs.set!(text('computed'));
    expect(textOf(store.read(PAGES, 'a')?.value)).toBe('computed');
    await gs.release();
    expect(tier.take()).toEqual([
      'sharing pages',
      'acquire a wait=true local=- locks=1',
      'write a=computed fence 1 size 10 local=- locks=1',
      'release fence 1 locks=1',
    ]);
    expect(backend.lockStats()).toEqual({ held: 0, waiting: 0 });

    // A fresh shared copy is handed out as the item, and kept.
    tier.copies.set(itemKey(PAGES, 'b'), { modified: 6, value: text('fresh') });
    const hit = await backend.getset(PAGES, 'b', { wait: true });
    expect(textOf(await hit.item!.value())).toBe('fresh');
    expect(textOf(store.read(PAGES, 'b')?.value)).toBe('fresh');
    await hit.release();
  });

  test('a fenced write (CACHE_LEASE_LOST) leaves the local copy as it was', async () => {
    const { backend, store, tier } = await open();
    await store.write(PAGES, 'a', { modified: 1, value: text('before'), expiresAtMs: Date.now() - 1000, staleUntilMs: Date.now() + 60_000 });
    const gs = await backend.getset(PAGES, 'a', { wait: true });
    tier.failure = 'fenced';
    await expect(gs.set!(text('late'))).rejects.toMatchObject({ code: 'CACHE_LEASE_LOST' });
    expect(textOf(store.read(PAGES, 'a')?.value)).toBe('before');
    await gs.release();
    expect(tier.take().at(-1)).toBe('release fence 1 locks=1');
  });

  test('a busy lease with wait: false misses and frees the local lock; a tier that is down leaves the local lock alone', async () => {
    const { backend, store, tier } = await open();
    tier.acquireAnswer = 'busy';
    const missed = await backend.getset(PAGES, 'a', { wait: false });
    expect(missed.set).toBeNull();
    expect(backend.lockStats()).toEqual({ held: 0, waiting: 0 });
    expect(tier.take()).toEqual(['sharing pages', 'acquire a wait=false local=- locks=1']);

    tier.acquireAnswer = null;
    const fallback = await backend.getset(PAGES, 'a', { wait: true });
    expect(backend.lockStats().held).toBe(1);
    await fallback.set!(text('computed'));
    await fallback.release();
    // Its setter writes as a plain set: local first, then the tier without a lease.
    expect(tier.take()).toEqual(['sharing pages', 'acquire a wait=true local=- locks=1', 'sharing pages', 'write a=computed size 10 local=computed locks=1']);
    expect(textOf(store.read(PAGES, 'a')?.value)).toBe('computed');
  });

  test('a wait for the lease ends with the request: the local lock is released and the call rejects with the reason', async () => {
    const { backend, tier } = await open();
    let letGo!: () => void;
    tier.holdAcquire = new Promise((resolve) => (letGo = resolve));
    const controller = new AbortController();
    const pending = backend.getset(PAGES, 'a', { wait: true, signal: controller.signal });
    await expect.poll(() => tier.calls.some((call) => call.startsWith('acquire'))).toBe(true);
    expect(backend.lockStats().held).toBe(1);
    controller.abort(new CacheError('CACHE_CONNECTION_LOST', 'gone'));
    await expect(pending).rejects.toMatchObject({ code: 'CACHE_CONNECTION_LOST' });
    expect(backend.lockStats()).toEqual({ held: 0, waiting: 0 });
    letGo();
  });

  test("the tier's sink: invalidate waits for the item's readers and deletes it, drop clears a scope; neither calls the tier", async () => {
    const { backend, store, tier } = await open({ pages: 'shared', '': 'shared' });
    await store.write(PAGES, 'a', { modified: 1, value: text('a') });
    await store.write(PAGES, 'b', { modified: 1, value: text('b') });
    await store.write(OWN, 'c', { modified: 1, value: text('c') });
    await store.write(ROOT_SCOPE, 'd', { modified: 1, value: text('d') });
    expect([...tier.sink!.localScopes()].sort()).toEqual(['', 'own', 'pages']);
    const reader = backend.readNow(PAGES, 'a')!;
    let invalidated = false;
    const invalidation = tier.sink!.invalidate(PAGES, 'a').then(() => (invalidated = true));
    await expect.poll(() => backend.lockStats().waiting).toBe(1);
    expect(backend.lockSnapshot().find((entry) => entry.state === 'waiting')?.owner).toEqual({ name: 'hoard tier' });
    expect(invalidated).toBe(false);
    reader.lease.release();
    await invalidation;
    expect(store.read(PAGES, 'a')).toBeUndefined();
    // An item this machine does not hold costs nothing.
    await tier.sink!.invalidate(PAGES, 'never');
    // Dropping the root drops what the tier shares only: the shared top-level scopes and the root's own items.
    await tier.sink!.drop(ROOT_SCOPE);
    expect(store.read(PAGES, 'b')).toBeUndefined();
    expect(store.read(ROOT_SCOPE, 'd')).toBeUndefined();
    expect(textOf(store.read(OWN, 'c')?.value)).toBe('c');
    await tier.sink!.drop(OWN);
    expect(store.read(OWN, 'c')).toBeUndefined();
    expect(tier.take().filter((call) => !call.startsWith('sharing'))).toEqual([]);
  });

  test('close closes the tier; openTier attaches it once', async () => {
    const store = await LevelStore.open(await tempDir('tier-backend-'), { maxSizeBytes: Infinity });
    const tier: RecordingTier = new RecordingTier({ '*': 'shared' }, () => ({ store, backend }));
    const backend = new LocalBackend<EncodedValue, EncodedValue>(store, keep, { tier });
    await backend.openTier();
    await backend.close();
    expect(tier.calls).toEqual(['attach', 'close']);
  });
});
