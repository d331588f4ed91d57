import { open, readFile, rename } from 'node:fs/promises';
import { itemKey, parseItemKey } from '../src/scope-path.js';
import { topOf } from './tier-keys.js';

/** The most item keys and cleared scopes remembered in all, by default: past it, the largest top-level scope goes `whole`. */
export const MAX_PENDING_CHANGES = 10_000;

/** What is to be written through for one top-level scope, clears first. */
export interface PendingTop {
  readonly top: string;
  /**
   * Too many changes to remember each: the whole top-level scope is cleared in Redis, then every local item of it
   * written through.
   */
  whole: boolean;
  /**
   * The fence a whole scope's clear stands at in Redis, once it went (`0` once given up, or from a file of an earlier
   * build that kept no number): a write-through tried again does not clear again what other machines wrote since, and
   * sends the scope's items fenced by it, so that Redis refuses each one another machine wrote after the clear.
   * Changes recorded after it are kept as they come. `undefined` until the clear went. `'lost'`: it went in a Redis
   * that has lost its data since (see {@link PendingChanges.checkIdentity}): not cleared again, and the items go
   * fenced by `0`, so that Redis refuses each one another machine wrote, cleared or took the lease of since the loss.
   */
  clearedAt: number | 'lost' | undefined;
  /** The prefixes of the sub-scopes cleared (`''`: the whole top-level scope), none nested in another. */
  readonly clears: Set<string>;
  /** The item keys (`itemKey(scope, id)`) set or deleted: their current local record is written through. */
  readonly keys: Set<string>;
  /**
   * The fencing number of each key whose last change was a getset's write fenced by its lease: that key's record is
   * written through fenced by this number (refused if Redis holds a newer write, grant or clear); the others plainly.
   * `0` once the Redis that granted it lost its data: refused if Redis holds any write, live grant or clear of it.
   */
  readonly fences: Map<string, number>;
  /** In a whole scope's pass under way, the keys of the items written through already: no longer held from eviction. Not kept in the file. */
  written?: Set<string>;
}

/** What `<dataDir>/tier-pending.json` holds. */
interface PendingFile {
  keyPrefix: string;
  /**
   * The tier identity (`<prefix>:id`) the fences and `clearedAt`s were taken against: `null` when unknown (a Redis user
   * who may not read it), absent in files of 0.5.0's earlier builds.
   */
  tierIdentity?: string | null;
  rootClear: boolean;
  /**
   * `fences`: key to fencing number, for the keys written through fenced; `clearedAt`: the fence a whole scope's clear
   * stands at, once it went (absent in files of 0.5.0's first builds; earlier builds wrote `cleared: true` instead,
   * read as `clearedAt: 0`).
   */
  tops: { top: string; whole: boolean; clearedAt?: number | 'lost'; cleared?: boolean; clears: string[]; keys: string[]; fences?: Record<string, number> }[];
}

/** Whether `key` is an item key (as `itemKey` makes them) of the top-level scope `top`: a file's keys are checked so. */
function isItemKeyIn(key: unknown, top: string): key is string {
  if (typeof key !== 'string' || !key.includes(':')) return false;
  const { scope, id } = parseItemKey(key);
  return itemKey(scope, id) === key && topOf(scope) === top;
}

/** Whether `prefix` is `''` (the whole top-level scope) or the prefix of a scope in the top-level scope `top`. */
function isPrefixIn(prefix: unknown, top: string): prefix is string {
  if (prefix === '') return true;
  if (typeof prefix !== 'string' || !prefix.endsWith('/')) return false;
  const { scope } = parseItemKey(`${prefix}:`);
  return scope.prefix === prefix && topOf(scope) === top;
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/**
 * Whether `key` (an item key `a/b/:id`, or a scope prefix `a/b/`) lies in the scope of prefix `prefix` (`''`: the
 * whole top-level scope): a scope's prefix ends with `/`, so its items' and nested scopes' keys begin with it.
 */
function isUnder(key: string, prefix: string): boolean {
  return key.startsWith(prefix);
}

/**
 * The changes in shared scopes that Redis did not take (the tier was degraded, or the command failed or timed out),
 * to be written through once it answers: per top-level scope, the sub-scopes cleared and the items changed, bounded
 * by `maxChanges` in all (past it, the top-level scope holding the most goes `whole`), and a clear of the root scope.
 * Kept in a file in the data directory, so that a write acknowledged meanwhile keeps its sharing across a restart.
 */
export class PendingChanges {
  readonly #path: string;
  readonly #keyPrefix: string;
  readonly #maxChanges: number;
  readonly #log: (line: string) => void;
  readonly #tops = new Map<string, PendingTop>();
  /** A clear of the root scope: every shared top-level scope is cleared in Redis before anything else is written. */
  #rootClear = false;
  #count = 0;
  /** What is being written through now: still counted, and still in the file, until finished or restored. */
  #taken: PendingTop | undefined;
  #rootClearTaken = false;
  /** The file write under way, and whether another is wanted after it (changes came meanwhile). */
  #saving: Promise<void> | undefined;
  #saveAgain: Promise<void> | undefined;
  /** The last file write failed: what is recorded may not be in the file. */
  #unsaved = false;
  /**
   * The tier identity the fences and `clearedAt`s were taken against, as the last {@link PendingChanges.checkIdentity}
   * found it; `undefined` until one did, or a file said it.
   */
  #identity: string | null | undefined;

  constructor(options: { path: string; keyPrefix: string; maxChanges?: number; log(line: string): void }) {
    this.#path = options.path;
    this.#keyPrefix = options.keyPrefix;
    this.#maxChanges = options.maxChanges ?? MAX_PENDING_CHANGES;
    if (!(this.#maxChanges >= 1)) throw new TypeError(`maxChanges must be at least 1: ${this.#maxChanges}`);
    this.#log = options.log;
  }

  /** How many changes wait: item keys, cleared scopes, whole top-level scopes, and a clear of the root scope. */
  get size(): number {
    let whole = 0;
    for (const pending of this.#tops.values()) if (pending.whole) whole++;
    const taken = this.#taken === undefined ? 0 : this.#taken.clears.size + this.#taken.keys.size + (this.#taken.whole ? 1 : 0);
    return this.#count + whole + taken + (this.#rootClear || this.#rootClearTaken ? 1 : 0);
  }

  /** The tier identity the fences and `clearedAt`s are relative to: `undefined` until known, `null` when unreadable. */
  get identity(): string | null | undefined {
    return this.#identity;
  }

  /**
   * Records the tier identity found now. When another was recorded (Redis lost its data, or this is another Redis),
   * every fence saved, also in the write-through under way, goes to `0` and every `clearedAt` to `'lost'`: numbers of
   * the old data mean nothing against the fencing counters that restarted, and a fence above them would refuse other
   * machines' leases. Returns whether that changed anything. An identity unknown on either side (`null`, or a file of
   * an earlier build that kept none) changes nothing: the write script still finds a fence above its scope's counter.
   */
  checkIdentity(current: string | null): boolean {
    const before = this.#identity;
    this.#identity = current;
    if (typeof before !== 'string' || typeof current !== 'string' || before === current) return before !== current;
    for (const pending of this.#taken === undefined ? this.#tops.values() : [this.#taken, ...this.#tops.values()]) {
      for (const key of pending.fences.keys()) pending.fences.set(key, 0);
      if (typeof pending.clearedAt === 'number' && pending.clearedAt > 0) pending.clearedAt = 'lost';
    }
    return true;
  }

  get rootClear(): boolean {
    return this.#rootClear;
  }

  /** Whether anything waits for the top-level scope (a clear of the root scope counts for every one). */
  has(top: string): boolean {
    return this.#rootClear || this.#tops.has(top);
  }

  /** The top-level scopes with changes waiting. */
  tops(): string[] {
    return [...this.#tops.keys()];
  }

  /**
   * Records that the item's current local record is to be written through: fenced by `fence` when given (the change
   * was a write fenced by a lease of that number), else plainly (a plain change forgets the fence of an earlier one).
   */
  addKey(top: string, key: string, fence?: number): boolean {
    const pending = this.#top(top);
    if (pending.whole && pending.clearedAt === undefined) return false;
    const before = pending.fences.get(key);
    if (fence === undefined) pending.fences.delete(key);
    else pending.fences.set(key, fence);
    if (pending.keys.has(key)) return before !== fence;
    pending.keys.add(key);
    this.#count++;
    this.#bound();
    return true;
  }

  /**
   * Records a clear of the scope of `prefix` (`''`: the top-level scope): what was waiting under it is forgotten.
   * Returns whether that changed what waits.
   */
  addClear(top: string, prefix: string): boolean {
    const pending = this.#top(top);
    for (const clear of pending.clears) if (isUnder(prefix, clear)) return false;
    this.#forgetUnder(pending, prefix);
    pending.clears.add(prefix);
    this.#count++;
    this.#bound();
    return true;
  }

  /**
   * Forgets the item's change and its fence, waiting or being written through now (the write-through skips it): a
   * later write of it that Redis took made it current there. Returns whether that changed what waits. A whole scope
   * keeps holding it.
   */
  forgetKey(top: string, key: string): boolean {
    let changed = false;
    const waiting = this.#tops.get(top);
    if (waiting?.keys.delete(key)) {
      waiting.fences.delete(key);
      this.#count--;
      changed = true;
      if (waiting.clears.size + waiting.keys.size === 0 && !waiting.whole) this.#tops.delete(top);
    }
    const taken = this.#taken?.top === top ? this.#taken : undefined;
    if (taken?.keys.delete(key)) {
      taken.fences.delete(key);
      changed = true;
    }
    return changed;
  }

  /** Whether the item's change waits, or is being written through now (a whole scope's items all do). */
  holds(top: string, key: string): boolean {
    const waiting = this.#tops.get(top);
    const taken = this.#taken?.top === top ? this.#taken : undefined;
    return [waiting, taken].some((pending) => pending !== undefined && ((pending.whole && pending.written?.has(key) !== true) || pending.keys.has(key)));
  }

  /** Whether the item waits as a key of its own, or is being written through now as one. */
  waitsAsKey(top: string, key: string): boolean {
    const taken = this.#taken?.top === top ? this.#taken : undefined;
    return this.#tops.get(top)?.keys.has(key) === true || taken?.keys.has(key) === true;
  }

  /**
   * How the item, waiting as a key of its own, is written through now, apart from a pass over its scope: fenced by a
   * number, or `'plain'`; `undefined` when it does not wait as a key, or its scope's pass has to come first (a clear
   * still to be written through covers it, or its scope is remembered whole).
   */
  keyFence(top: string, key: string): number | 'plain' | undefined {
    if (this.covers(top, key)) return undefined;
    const waiting = this.#tops.get(top);
    const taken = this.#taken?.top === top ? this.#taken : undefined;
    if (waiting?.whole === true || taken?.whole === true) return undefined;
    // What was recorded since the pass took its scope is the later change.
    for (const pending of [waiting, taken]) if (pending?.keys.has(key) === true) return pending.fences.get(key) ?? 'plain';
    return undefined;
  }

  /**
   * Whether a clear still to be written through covers the item (a whole scope's, or the root scope's): a write of it
   * that Redis took now must be written again after that clear.
   */
  covers(top: string, key: string): boolean {
    if (this.#rootClear || this.#rootClearTaken) return true;
    const waiting = this.#tops.get(top);
    const taken = this.#taken?.top === top ? this.#taken : undefined;
    return [waiting, taken].some(
      (pending) => pending !== undefined && ((pending.whole && pending.clearedAt === undefined) || [...pending.clears].some((prefix) => isUnder(key, prefix))),
    );
  }

  /**
   * Forgets what waits under the scope of `prefix`, also in the write-through under way (it skips what is forgotten):
   * it was cleared, locally and in Redis, and sending it later would undo other machines' writes made since.
   */
  settled(top: string, prefix: string): void {
    const pending = this.#tops.get(top);
    if (pending !== undefined) {
      this.#forgetUnder(pending, prefix);
      if (pending.clears.size + pending.keys.size === 0 && !pending.whole) this.#tops.delete(top);
    }
    const taken = this.#taken?.top === top ? this.#taken : undefined;
    if (taken === undefined) return;
    // Not counted in #count (take() took them out of it).
    for (const clear of taken.clears) if (isUnder(clear, prefix)) taken.clears.delete(clear);
    for (const key of taken.keys) {
      if (isUnder(key, prefix)) {
        taken.keys.delete(key);
        taken.fences.delete(key);
      }
    }
  }

  /** Records a clear of the root scope: everything waiting is forgotten (the local store was cleared too). */
  addRootClear(): void {
    this.#tops.clear();
    this.#count = 0;
    this.#rootClear = true;
  }

  /**
   * Takes what waits for the top-level scope, to write it through (one at a time), deleting from it what is done;
   * {@link PendingChanges.finish} ends it, {@link PendingChanges.restore} puts back what was not done.
   */
  take(top: string): PendingTop | undefined {
    const pending = this.#tops.get(top);
    if (pending === undefined) return undefined;
    this.#tops.delete(top);
    this.#count -= pending.clears.size + pending.keys.size;
    this.#taken = pending;
    return pending;
  }

  /** Takes the clear of the root scope, if one waits (then {@link PendingChanges.finish} or restore it). */
  takeRootClear(): boolean {
    const was = this.#rootClear;
    this.#rootClear = false;
    this.#rootClearTaken = was;
    return was;
  }

  /** What was taken is written through. */
  finish(): void {
    this.#taken = undefined;
    this.#rootClearTaken = false;
  }

  /**
   * Puts back what a write-through did not do, before whatever was recorded since for the same scope (which stays
   * after it: the clears put back go first, and a later clear still forgets what it covers).
   */
  restore(left: PendingTop | { rootClear: true }): void {
    this.finish();
    if ('rootClear' in left) {
      this.#rootClear = true;
      return;
    }
    const later = this.take(left.top);
    this.#taken = undefined;
    const merged: PendingTop = { top: left.top, whole: left.whole, clearedAt: left.clearedAt, clears: new Set(), keys: new Set(), fences: new Map() };
    this.#tops.set(left.top, merged);
    for (const clear of left.clears) this.addClear(left.top, clear);
    for (const key of left.keys) this.addKey(left.top, key, left.fences.get(key));
    if (later === undefined) return;
    for (const clear of later.clears) this.addClear(left.top, clear);
    for (const key of later.keys) this.addKey(left.top, key, later.fences.get(key));
    if (later.whole) this.#makeWhole(merged);
  }

  /** Reads the file a previous run left; a file for another key prefix, or unreadable, is logged and ignored. */
  async load(): Promise<void> {
    let text: string;
    try {
      text = await readFile(this.#path, 'utf8');
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') this.#log(`tier: the changes waiting for the tier could not be read, they are lost: ${messageOf(error)}`);
      return;
    }
    let file: Partial<PendingFile>;
    try {
      file = (JSON.parse(text) ?? {}) as Partial<PendingFile>;
    } catch {
      this.#log(`tier: ${this.#path} is not JSON: the changes waiting for the tier are lost`);
      return;
    }
    if (file.keyPrefix !== this.#keyPrefix || !Array.isArray(file.tops)) return;
    // A file of an earlier build kept no identity: its fences are taken as the tier's found first (see checkIdentity).
    if (typeof file.tierIdentity === 'string' || file.tierIdentity === null) this.#identity = file.tierIdentity;
    if (file.rootClear === true) this.addRootClear();
    for (const entry of file.tops) {
      if (typeof entry?.top !== 'string') continue;
      // Whole first: what was recorded after its clear went to Redis is kept with it.
      if (entry.whole === true) {
        const pending = this.#top(entry.top);
        this.#makeWhole(pending);
        const clearedAt: unknown = entry.clearedAt;
        if ((typeof clearedAt === 'number' && Number.isSafeInteger(clearedAt) && clearedAt >= 0) || clearedAt === 'lost') pending.clearedAt = clearedAt;
        // An earlier build's file: the clear went, at a fence it did not keep. Not cleared again; items go plain, as then.
        else if (entry.cleared === true) pending.clearedAt = 0;
      }
      for (const clear of Array.isArray(entry.clears) ? entry.clears : []) if (isPrefixIn(clear, entry.top)) this.addClear(entry.top, clear);
      const fences: unknown = entry.fences;
      const fenceOf = (key: string): number | undefined => {
        const fence = typeof fences === 'object' && fences !== null && Object.hasOwn(fences, key) ? (fences as Record<string, unknown>)[key] : undefined;
        return typeof fence === 'number' && Number.isSafeInteger(fence) && fence >= 0 ? fence : undefined;
      };
      for (const key of Array.isArray(entry.keys) ? entry.keys : []) if (isItemKeyIn(key, entry.top)) this.addKey(entry.top, key, fenceOf(key));
    }
  }

  /**
   * Settles once the file writes under way (or asked for) are done: what is recorded now is in the file then, if they
   * succeed. When none is under way and the last one failed, writes the file again.
   * @throws the file system's error.
   */
  saved(): Promise<void> {
    return this.#saveAgain ?? this.#saving ?? (this.#unsaved ? this.save() : Promise.resolve());
  }

  /**
   * Writes the file (0600, fsynced, then renamed over the last one), resolving once what was recorded before the call
   * is on disk: calls made while a write is under way share the next one.
   * @throws the file system's error.
   */
  save(): Promise<void> {
    if (this.#saving === undefined) {
      this.#saving = this.#write()
        .then(
          () => void (this.#unsaved = false),
          (error: unknown) => {
            this.#unsaved = true;
            throw error;
          },
        )
        .finally(() => (this.#saving = undefined));
      return this.#saving;
    }
    this.#saveAgain ??= this.#saving
      .catch(() => {})
      .then(() => {
        this.#saveAgain = undefined;
        return this.save();
      });
    return this.#saveAgain;
  }

  async #write(): Promise<void> {
    // What is being written through comes first: what was recorded since for the same scope goes after it.
    const tops = this.#taken === undefined ? [...this.#tops.values()] : [this.#taken, ...this.#tops.values()];
    const file: PendingFile = {
      keyPrefix: this.#keyPrefix,
      ...(this.#identity === undefined ? {} : { tierIdentity: this.#identity }),
      rootClear: this.#rootClear || this.#rootClearTaken,
      tops: tops.map(({ top, whole, clearedAt, clears, keys, fences }) => ({
        top,
        whole,
        ...(clearedAt === undefined ? {} : { clearedAt }),
        clears: [...clears],
        keys: [...keys],
        fences: Object.fromEntries(fences),
      })),
    };
    const temporary = `${this.#path}.tmp`;
    const handle = await open(temporary, 'w', 0o600);
    try {
      await handle.writeFile(`${JSON.stringify(file)}\n`);
      await handle.sync();
    } finally {
      await handle.close();
    }
    await rename(temporary, this.#path);
  }

  #top(top: string): PendingTop {
    let pending = this.#tops.get(top);
    if (pending === undefined) this.#tops.set(top, (pending = { top, whole: false, clearedAt: undefined, clears: new Set(), keys: new Set(), fences: new Map() }));
    return pending;
  }

  #forgetUnder(pending: PendingTop, prefix: string): void {
    for (const clear of pending.clears) {
      if (isUnder(clear, prefix)) {
        pending.clears.delete(clear);
        this.#count--;
      }
    }
    for (const key of pending.keys) {
      if (isUnder(key, prefix)) {
        pending.keys.delete(key);
        pending.fences.delete(key);
        this.#count--;
      }
    }
  }

  /** Past the bound, the top-level scopes holding the most changes go `whole`, until it holds again. */
  #bound(): void {
    while (this.#count > this.#maxChanges) {
      let largest: PendingTop | undefined;
      for (const pending of this.#tops.values()) if (largest === undefined || pending.clears.size + pending.keys.size > largest.clears.size + largest.keys.size) largest = pending;
      this.#makeWhole(largest!);
    }
  }

  #makeWhole(pending: PendingTop): void {
    this.#count -= pending.clears.size + pending.keys.size;
    pending.clears.clear();
    pending.keys.clear();
    pending.fences.clear();
    pending.whole = true;
    pending.clearedAt = undefined;
  }
}
