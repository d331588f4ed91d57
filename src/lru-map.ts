/**
 * A map that keeps at most `maxBytes` of entries (by the sizes the caller gives), dropping the least recently
 * used first. An entry larger than an eighth of the budget is not kept, so one huge value cannot empty it.
 */
export class LruMap<K, V> {
  readonly #entries = new Map<K, { value: V; bytes: number }>();
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
    // Re-inserting moves the entry to the young end of the map's order.
    this.#entries.delete(key);
    this.#entries.set(key, entry);
    return entry.value;
  }

  set(key: K, value: V, bytes: number): void {
    this.delete(key);
    if (bytes > this.#maxBytes / 8) return;
    this.#entries.set(key, { value, bytes });
    this.#bytes += bytes;
    if (this.#bytes <= this.#maxBytes) return;
    for (const [oldKey, entry] of this.#entries) {
      this.#entries.delete(oldKey);
      this.#bytes -= entry.bytes;
      if (this.#bytes <= this.#maxBytes) break;
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
