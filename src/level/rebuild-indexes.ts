import type { Level } from 'level';
import {
  COUNTER_PREFIX,
  counterKey,
  decodeFields,
  decodeMeta,
  encodeCounter,
  encodeMeta,
  EXPIRY_PREFIX,
  FORMAT_COUNTED,
  FORMAT_KEY,
  inChunks,
  indexKey,
  type ItemMeta,
  ITEM_PREFIX,
  META_PREFIX,
  range,
  RECENCY_PREFIX,
  countedBytes,
  topSegment,
  withPrefix,
} from './records.js';

type Operation = { type: 'put'; key: Buffer; value: Buffer } | { type: 'del'; key: Buffer };

/**
 * Makes the `t`, `r`, `x` and `c` entries of a database that nothing else uses (an open of layout 1 or 2, before it
 * serves; a repair) say exactly what its records hold, then writes `mformat` 3, last: a crash part way leaves the
 * old format, and the next open does it all again. An item keeps the recency bucket of its `t` entry; one without
 * (layout 1 or 2) gets the bucket of its `modified` (seconds), or of now if that is later. Resolves with the number
 * of items counted.
 */
export async function rebuildIndexes(db: Level<Buffer, Buffer>, options: { nowMs: number; recencyBucketMs: number }): Promise<number> {
  const { nowMs, recencyBucketMs } = options;
  const bucket = (ms: number): number => Math.floor(ms / recencyBucketMs) * recencyBucketMs;
  const counters = new Map<string, { bytes: number; items: number }>();
  const metaOf = (key: Buffer): ItemMeta | undefined => {
    const raw = db.getSync(key);
    if (raw === undefined) return undefined;
    try {
      return decodeMeta(raw);
    } catch {
      return undefined;
    }
  };
  // Items: their meta and index entries, added (and those of a changed meta replaced) before any stray one goes.
  await inChunks(db.iterator(range(ITEM_PREFIX, '')), async (entries) => {
    const operations: Operation[] = [];
    for (const [itemKey, raw] of entries) {
      let sizeBytes: number;
      let fields: ReturnType<typeof decodeFields>;
      try {
        fields = decodeFields(raw);
        sizeBytes = countedBytes(itemKey, raw);
      } catch {
        // A damaged record counts for what it takes in the database; reading it fails as it did.
        fields = undefined!;
        sizeBytes = itemKey.length + raw.length;
      }
      const key = itemKey.toString('utf8', 1);
      const metaKey = withPrefix(META_PREFIX, itemKey);
      const old = metaOf(metaKey);
      const modifiedMs = fields ? Math.max(0, fields.modified * 1000) : nowMs;
      const meta: ItemMeta = {
        sizeBytes,
        accessedAtMs: old?.accessedAtMs ?? bucket(Number.isFinite(modifiedMs) ? Math.min(modifiedMs, nowMs) : nowMs),
        staleUntilMs: fields?.staleUntilMs,
      };
      operations.push({ type: 'put', key: metaKey, value: encodeMeta(meta) });
      operations.push({ type: 'put', key: indexKey(RECENCY_PREFIX, meta.accessedAtMs, key), value: Buffer.alloc(0) });
      if (meta.staleUntilMs !== undefined) operations.push({ type: 'put', key: indexKey(EXPIRY_PREFIX, meta.staleUntilMs, key), value: Buffer.alloc(0) });
      const segment = topSegment(key);
      const counter = counters.get(segment) ?? { bytes: 0, items: 0 };
      counter.bytes += sizeBytes;
      counter.items++;
      counters.set(segment, counter);
    }
    await db.batch(operations);
  });
  // Strays: meta entries with no record, index entries that their item's meta does not name.
  await inChunks(db.keys(range(META_PREFIX, '')), async (keys) => {
    const stray = keys.filter((key) => db.getSync(withPrefix(ITEM_PREFIX, key)) === undefined);
    if (stray.length > 0) await db.batch(stray.map((key) => ({ type: 'del' as const, key })));
  });
  for (const prefix of [RECENCY_PREFIX, EXPIRY_PREFIX]) {
    await inChunks(db.keys(range(prefix, '')), async (keys) => {
      const stray = keys.filter((indexed) => !indexMatches(indexed, metaOf));
      if (stray.length > 0) await db.batch(stray.map((key) => ({ type: 'del' as const, key })));
    });
  }
  const operations: Operation[] = [];
  await inChunks(db.keys(range(COUNTER_PREFIX, '')), (keys) => {
    for (const key of keys) if (!counters.has(key.toString('utf8', 1))) operations.push({ type: 'del', key });
  });
  for (const [segment, counter] of counters) operations.push({ type: 'put', key: counterKey(segment), value: encodeCounter(counter) });
  operations.push({ type: 'put', key: FORMAT_KEY, value: Buffer.from(FORMAT_COUNTED) });
  await db.batch(operations);
  let items = 0;
  for (const counter of counters.values()) items += counter.items;
  return items;
}

/** Whether a recency or expiry index entry is the one its item's meta calls for. */
export function indexMatches(indexed: Buffer, metaOf: (metaKey: Buffer) => ItemMeta | undefined): boolean {
  const key = indexed.toString('utf8', 7);
  const meta = metaOf(Buffer.from(META_PREFIX + key, 'utf8'));
  if (!meta) return false;
  const ms = indexed[0] === RECENCY_PREFIX.charCodeAt(0) ? meta.accessedAtMs : meta.staleUntilMs;
  return ms !== undefined && indexKey(indexed.toString('latin1', 0, 1), ms, key).equals(indexed);
}
