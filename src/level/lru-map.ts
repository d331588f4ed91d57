/**
 * A map that keeps at most `maxBytes` of entries (by the sizes the caller gives), dropping the least recently
 * used first, approximately: a hit only marks its entry, and eviction gives a marked entry a second chance
 * (the CLOCK algorithm). Moving an entry on every hit instead costs V8's Map tens of microseconds when one key
 * is hit over and over among thousands. An entry larger than an eighth of the budget is not kept, so one huge
 * value cannot empty the map.
 */
export class LruMap<K, V> {
  readonly #entries = new Map<K, { value: V; bytes: number; used: boolean }>();
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

  set(key: K, value: V, bytes: number): void {
    this.delete(key);
    if (bytes > this.#maxBytes / 8) return;
    this.#entries.set(key, { value, bytes, used: false });
    this.#bytes += bytes;
    while (this.#bytes > this.#maxBytes) {
      const [oldKey, entry] = this.#entries.entries().next().value!;
      this.#entries.delete(oldKey);
      if (entry.used) {
        // Used since it last came round: it goes to the young end instead of out.
        entry.used = false;
        this.#entries.set(oldKey, entry);
      } else {
        this.#bytes -= entry.bytes;
      }
    }
  }

  delete(key: K): void {
    const entry = this.#entries.get(key);
    if (!entry) return;
    this.#entries.delete(key);
    this.#bytes -= entry.bytes;
  }

  /** Drops every entry whose key passes `test`. */
  deleteWhere(test: (key: K) => boolean): void {
    for (const [key, entry] of this.#entries) {
      if (!test(key)) continue;
      this.#entries.delete(key);
      this.#bytes -= entry.bytes;
    }
  }
}
