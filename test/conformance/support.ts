import { describe, expect, test } from 'vitest';
import type { Cache, CacheErrorCode, CodecName } from '../../src/index.js';

/** A fresh, empty cache made for one test; the factory registers its own cleanup. */
export interface Subject {
  cache: Cache<unknown>;
  /** Closes the underlying cache; may be called more than once. */
  close(): Promise<void>;
  /**
   * Resolves once every call made so far has reached the point where it either completed or waits for a lock:
   * what lets a test say "this call is still waiting" without a sleep.
   */
  settle?(): Promise<void>;
  /**
   * The clock the cache reads for expiry, when the test controls it (an in-process cache); without it the cache
   * reads the real clock, and tests use TTLs of a few milliseconds and wait for the clock to pass them.
   */
  clock?: ManualClock;
  /** How many items the cache has removed because they expired, since it opened (a figure the backend reports). */
  expirations?(): Promise<number>;
}

export type OpenSubject = () => Promise<Subject>;

/** What a backend can do, so that tests differ by capability, never by backend name. */
export interface Features {
  /** Whether set values can be read back (false for the no-op cache). */
  stores: boolean;
  /** `'as-given'`: values are kept by reference; otherwise the codec values pass through. */
  values: 'as-given' | CodecName;
  /** Whether the subject reports how many items expired ({@link Subject.expirations}). */
  countsExpirations?: boolean;
}

/** A clock that moves only when told, for expiry without waiting. */
export class ManualClock {
  #ms = Date.now();
  readonly now = (): number => this.#ms;
  advance(ms: number): void {
    this.#ms += ms;
  }
}

export interface Suite {
  open: OpenSubject;
  features: Features;
}

/** The scope paths every basic case runs in. */
type Register = (name: string, body: () => unknown, timeoutMs?: number) => void;

/** `test` for a case that applies to the backend; one that does not apply is not registered, rather than reported as skipped. */
export function testWhen(applies: boolean): Register {
  return applies ? (name, body, timeoutMs) => test(name, async () => { await body(); }, timeoutMs) : () => {};
}

/** `describe` for a group of cases that applies to the backend; one that does not apply is not registered. */
export function describeWhen(applies: boolean): (name: string, body: () => void) => void {
  return applies ? (name, body) => describe(name, body) : () => {};
}

export const SCOPE_PATHS: readonly (readonly string[])[] = [[], ['scope'], ['outer', 'inner']];

export function inScope(cache: Cache<unknown>, path: readonly string[]): Cache<unknown> {
  return path.reduce((scope, name) => scope.withScope(name), cache);
}

/** Lets callbacks, timers of zero and I/O that has already finished run. */
export async function flush(): Promise<void> {
  for (let turn = 0; turn < 5; turn++) await new Promise((resolve) => setImmediate(resolve));
}

/** A promise's state, observable without awaiting it. */
export interface Tracked<T> {
  readonly promise: Promise<T>;
  readonly settled: boolean;
}

export function track<T>(promise: Promise<T>): Tracked<T> {
  const tracked = { promise, settled: false };
  promise.then(
    () => (tracked.settled = true),
    () => (tracked.settled = true),
  );
  return tracked;
}

/** Whether the call is still waiting once everything that could have let it finish has run. */
export async function isWaiting(subject: Subject, tracked: Tracked<unknown>): Promise<boolean> {
  await (subject.settle ? subject.settle() : flush());
  await flush();
  return !tracked.settled;
}

export async function expectCode(promise: Promise<unknown>, code: CacheErrorCode): Promise<void> {
  await expect(promise).rejects.toMatchObject({ name: 'CacheError', code });
}

export async function valueOf(cache: Cache<unknown>, id: string): Promise<unknown> {
  await using got = await cache.get(id);
  return got.item ? await got.item.value() : undefined;
}

/** Whether the item's exclusive lock can be taken right now (and leaves it free again). */
export async function isFree(cache: Cache<unknown>, id: string): Promise<boolean> {
  const attempt = await cache.getset(id, { wait: false });
  await attempt.release();
  return attempt.set !== null;
}

/** Whether a `get` on the item completes with nothing else happening. */
export async function isReadable(subject: Subject, cache: Cache<unknown>, id: string): Promise<boolean> {
  const controller = new AbortController();
  const got = track(cache.get(id, { signal: controller.signal }));
  const waiting = await isWaiting(subject, got);
  controller.abort(new Error('probe done'));
  if (!waiting) await (await got.promise).release();
  else await got.promise.catch(() => {});
  return !waiting;
}

/** The subject's clock now, in milliseconds. */
export function clockNow(subject: Subject): number {
  return subject.clock ? subject.clock.now() : Date.now();
}

/**
 * Lets the subject's clock pass `untilMs`: moves a controlled clock there, or waits (a few milliseconds, for the
 * tiny TTLs used with the real clock) until the real one has.
 */
export async function passTime(subject: Subject, untilMs: number): Promise<void> {
  if (subject.clock) {
    subject.clock.advance(Math.max(0, untilMs + 1 - subject.clock.now()));
    return;
  }
  while (Date.now() <= untilMs) await new Promise((resolve) => setTimeout(resolve, 1));
}

/** Polls `condition` until it holds; fails after a generous liveness bound. */
export async function eventually(condition: () => Promise<boolean> | boolean, what: string, boundMs = 20_000): Promise<void> {
  const deadline = Date.now() + boundMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`Still not true after ${boundMs} ms: ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}
