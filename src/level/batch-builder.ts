import { counterKey, encodeCounter, encodeMeta, EXPIRY_PREFIX, indexKey, type ItemMeta, META_PREFIX, RECENCY_PREFIX, topSegment } from './records.js';

export type Operation = { type: 'put'; key: Buffer; value: Buffer } | { type: 'del'; key: Buffer };

/** The bytes and items counted for one top-level scope. */
export interface Counter {
  bytes: number;
  items: number;
}

const EMPTY = Buffer.alloc(0);

/**
 * One LevelDB batch as it is built: its operations, and the meta entries and counter changes of the items it
 * puts and deletes. An item's old meta is read when the batch is built (batches are built and written one at a
 * time, so nothing changes it meanwhile), or from this batch if it already changed it.
 */
export class BatchBuilder {
  readonly operations: Operation[] = [];
  readonly #readMeta: (key: string) => ItemMeta | undefined | 'damaged';
  readonly #recordMeta: (key: string) => ItemMeta | undefined;
  readonly #metas = new Map<string, ItemMeta | undefined>();
  readonly #deltas = new Map<string, Counter>();
  /** Counter entries written whatever their change (verify's mending of a damaged one). */
  readonly #rewrite = new Set<string>();

  /**
   * `readMeta` reads an item's meta entry; `recordMeta` makes one from its record, for an item whose meta entry is
   * damaged, or missing when it is deleted: what it counted for, its expiry, and an unknown recency (`NaN`).
   */
  constructor(options: { readMeta: (key: string) => ItemMeta | undefined | 'damaged'; recordMeta: (key: string) => ItemMeta | undefined }) {
    this.#readMeta = options.readMeta;
    this.#recordMeta = options.recordMeta;
  }

  put(key: Buffer, value: Buffer): void {
    this.operations.push({ type: 'put', key, value });
  }

  del(key: Buffer): void {
    this.operations.push({ type: 'del', key });
  }

  /** The meta of item `key` as this batch leaves it so far. */
  meta(key: string): ItemMeta | undefined {
    if (this.#metas.has(key)) return this.#metas.get(key);
    const meta = this.#readMeta(key);
    return meta === 'damaged' ? undefined : meta;
  }

  /** What item `key` counts for before `next`: its meta, or, if that is damaged (or missing for a delete), its record's. */
  #counted(key: string, next: ItemMeta | undefined): ItemMeta | undefined {
    if (this.#metas.has(key)) return this.#metas.get(key);
    const meta = this.#readMeta(key);
    if (meta === 'damaged' || (meta === undefined && next === undefined)) return this.#recordMeta(key);
    return meta;
  }

  /**
   * Sets item `key`'s meta (`undefined`: the item is gone), with its index entries and its scope's counter change. An
   * index entry that stays as it is (a replacement in the same bucket, say) is neither deleted nor put again, unless
   * `rewriteIndexes` (verify's mending, for an entry that may be missing).
   */
  setMeta(key: string, meta: ItemMeta | undefined, options: { rewriteIndexes?: boolean } = {}): void {
    const old = this.#counted(key, meta);
    const rewrite = options.rewriteIndexes === true;
    const keepRecency = !rewrite && old !== undefined && old.accessedAtMs === meta?.accessedAtMs;
    const keepExpiry = !rewrite && old?.staleUntilMs !== undefined && old.staleUntilMs === meta?.staleUntilMs;
    // An unknown recency (a meta made from the record) leaves its entry to leastRecent, which drops it as a stray.
    if (old && !keepRecency && !Number.isNaN(old.accessedAtMs)) this.del(indexKey(RECENCY_PREFIX, old.accessedAtMs, key));
    if (old?.staleUntilMs !== undefined && !keepExpiry) this.del(indexKey(EXPIRY_PREFIX, old.staleUntilMs, key));
    const metaKey = Buffer.from(META_PREFIX + key, 'utf8');
    if (meta) {
      this.put(metaKey, encodeMeta(meta));
      if (!keepRecency) this.put(indexKey(RECENCY_PREFIX, meta.accessedAtMs, key), EMPTY);
      if (meta.staleUntilMs !== undefined && !keepExpiry) this.put(indexKey(EXPIRY_PREFIX, meta.staleUntilMs, key), EMPTY);
    } else {
      this.del(metaKey);
    }
    this.#metas.set(key, meta);
    this.adjust(topSegment(key), { bytes: (meta?.sizeBytes ?? 0) - (old?.sizeBytes ?? 0), items: (meta ? 1 : 0) - (old ? 1 : 0) });
  }

  /** Changes the counter of the top-level scope whose escaped name is `segment` by `delta`. */
  adjust(segment: string, delta: Counter): void {
    if (delta.bytes === 0 && delta.items === 0 && !this.#rewrite.has(segment)) return;
    const sum = this.#deltas.get(segment);
    if (sum) {
      sum.bytes += delta.bytes;
      sum.items += delta.items;
    } else {
      this.#deltas.set(segment, { ...delta });
    }
  }

  /** Writes the counter entry of `segment` with this batch whether or not it changes (one that was damaged). */
  rewriteCounter(segment: string): void {
    this.#rewrite.add(segment);
    this.adjust(segment, { bytes: 0, items: 0 });
  }

  /**
   * Adds the counter entries that change, from `counters` (the figures before this batch), and returns the new
   * figures of those scopes (`undefined`: the scope has nothing left, and its entry goes).
   */
  finishCounters(counters: ReadonlyMap<string, Counter>): Map<string, Counter | undefined> {
    const changed = new Map<string, Counter | undefined>();
    for (const [segment, delta] of this.#deltas) {
      if (delta.bytes === 0 && delta.items === 0 && !this.#rewrite.has(segment)) continue;
      const now = counters.get(segment) ?? { bytes: 0, items: 0 };
      const next = { bytes: now.bytes + delta.bytes, items: now.items + delta.items };
      if (next.bytes === 0 && next.items === 0) {
        this.del(counterKey(segment));
        changed.set(segment, undefined);
      } else {
        this.put(counterKey(segment), encodeCounter(next));
        changed.set(segment, next);
      }
    }
    return changed;
  }
}
