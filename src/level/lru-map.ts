/** One entry, linked into the map's ring from the oldest to the youngest. */
class Entry<K, V> {
  prev: Entry<K, V> = this;
  next: Entry<K, V> = this;
  used = false;
  /** The mark it was last got or set with (see {@link LruMap.getMarked}). */
  mark = -Infinity;

  constructor(
    readonly key: K,
    readonly value: V,
    readonly bytes: number,
  ) {}
}

/**
 * A map that keeps at most `maxBytes` of entries (by the sizes the caller gives), dropping the least recently
 * used first, approximately: a hit only marks its entry, and eviction gives a marked entry a second chance
 * (the CLOCK algorithm), so that a hit writes nothing but a flag. The entries form a linked ring: evicting is O(1),
 * where taking the oldest entry of a `Map` that keeps dropping its oldest walks past every deleted slot since its
 * last rehash (seconds, for 100k small values). An entry larger than an eighth of the budget is not kept, so one
 * huge value cannot empty the map.
 */
export class LruMap<K, V> {
  readonly #entries = new Map<K, Entry<K, V>>();
  /** The ring's anchor: `next` is the oldest entry, `prev` the youngest. */
  readonly #ring = new Entry<K, V>(undefined as K, undefined as V, 0);
  readonly #maxBytes: number;
  #bytes = 0;

  constructor(options: { maxBytes: number }) {
    this.#maxBytes = options.maxBytes;
  }

  /** The sum of the sizes of the entries kept. */
  get bytes(): number {
    return this.#bytes;
  }

  get size(): number {
    return this.#entries.size;
  }

  get(key: K): V | undefined {
    const entry = this.#entries.get(key);
    if (!entry) return undefined;
    entry.used = true;
    return entry.value;
  }

  /**
   * Like `get`, and calls `firstUse` when the entry was not yet got or set with this `mark` (a time bucket, say), so
   * that the caller does something once per entry and mark without a lookup of its own.
   */
  getMarked(key: K, mark: number, firstUse: (key: K) => void): V | undefined {
    const entry = this.#entries.get(key);
    if (!entry) return undefined;
    entry.used = true;
    if (entry.mark !== mark) {
      entry.mark = mark;
      firstUse(key);
    }
    return entry.value;
  }

  set(key: K, value: V, bytes: number, mark = -Infinity): void {
    this.delete(key);
    if (bytes > this.#maxBytes / 8) return;
    const entry = new Entry(key, value, bytes);
    entry.mark = mark;
    this.#entries.set(key, entry);
    this.#link(entry);
    this.#bytes += bytes;
    while (this.#bytes > this.#maxBytes) {
      const oldest = this.#ring.next;
      this.#unlink(oldest);
      if (oldest.used) {
        // Used since it last came round: it goes to the young end instead of out.
        oldest.used = false;
        this.#link(oldest);
      } else {
        this.#entries.delete(oldest.key);
        this.#bytes -= oldest.bytes;
      }
    }
  }

  delete(key: K): void {
    const entry = this.#entries.get(key);
    if (!entry) return;
    this.#entries.delete(key);
    this.#unlink(entry);
    this.#bytes -= entry.bytes;
  }

  /** Drops every entry whose key passes `test`. */
  deleteWhere(test: (key: K) => boolean): void {
    for (const [key, entry] of this.#entries) {
      if (!test(key)) continue;
      this.#entries.delete(key);
      this.#unlink(entry);
      this.#bytes -= entry.bytes;
    }
  }

  /** Puts `entry` at the young end. */
  #link(entry: Entry<K, V>): void {
    const youngest = this.#ring.prev;
    entry.prev = youngest;
    entry.next = this.#ring;
    youngest.next = entry;
    this.#ring.prev = entry;
  }

  #unlink(entry: Entry<K, V>): void {
    entry.prev.next = entry.next;
    entry.next.prev = entry.prev;
  }
}
