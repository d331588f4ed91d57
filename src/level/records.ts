import { CacheError } from '../errors.js';
import type { EncodedValue, StoredRecord } from '../store.js';

/**
 * The LevelDB layout (layout 3). Every key starts with one byte that says what it is; `key` below is the UTF-8 of
 * `scope-path.ts`'s item key, whose order is the listing's order.
 * - `i` + key: the item's record. Byte 0 the record version, bytes 1-8 `modified` as a little-endian float64, byte 9
 *   the length n of the encoding name, then n bytes of the name in ASCII; versions 3 and 4 (an item that expires)
 *   then hold `expiresAtMs` and `staleUntilMs` as little-endian float64s. Then, in versions 1 and 3, the value's bytes;
 *   in versions 2 and 4 (a value of `BLOB_MIN_BYTES`, in `blob-files.ts`, or more), the value's length as a
 *   little-endian uint32 and the name of the file in `blobs/` that holds it, in ASCII.
 * - `b` + key: the name of the item's file, for an item that has one: what `clear` and the sweep of unreferenced
 *   files read.
 * - `t` + key: the item's meta, written in the batch of every put of the item: its counted size (the bytes of its `i`
 *   key and record, plus its file's length) and the start of the recency bucket it was last used in, as little-endian
 *   float64s; for an item that expires, its `staleUntilMs` too (so that a delete finds its `x` entry without reading
 *   the record).
 * - `r` + the bucket start as a 48-bit big-endian integer (ms) + key: empty; the recency index, least recent first.
 * - `x` + `staleUntilMs` as a 48-bit big-endian integer + key: empty; the expiry index, for items that expire.
 * - `c` + the escaped name of a top-level scope (as in item keys; empty for the root scope's own items): that scope's
 *   counted bytes and items, as little-endian float64s; the totals are their sum. Absent for a scope with no items.
 * - `m` + name: metadata; `mformat` is the layout version.
 * Every batch that puts or deletes an item changes its `t`, `r`, `x` and `c` entries with it, so the counts are exact
 * whenever the batch is written; index and meta entries are not counted. Layout 1 had versions 1 records only, layout
 * 2 version 2 too; opening either rebuilds the `t`, `r`, `x` and `c` entries from the records before writing `mformat`
 * 3 last (see `rebuildIndexes`), so a crash part way simply starts it again at the next open.
 */
export const ITEM_PREFIX = 'i';
export const BLOB_PREFIX = 'b';
export const FORMAT_KEY = Buffer.from('mformat');
export const META_PREFIX = 't';
export const RECENCY_PREFIX = 'r';
export const EXPIRY_PREFIX = 'x';
export const COUNTER_PREFIX = 'c';
export const FORMAT_PLAIN = '1';
export const FORMAT_BLOBS = '2';
export const FORMAT_COUNTED = '3';
export const RECORD_VERSION = 1;
export const BLOB_RECORD_VERSION = 2;
export const EXPIRING_RECORD_VERSION = 3;
export const EXPIRING_BLOB_RECORD_VERSION = 4;
const HEADER_BYTES = 10;
const EXPIRY_BYTES = 16;
/** The largest time an index key holds (48 bits of milliseconds: the year 10889). */
const MAX_INDEX_MS = 2 ** 48 - 1;
/** Iterations over a range (a clear, the sweep, repair) take this many entries at a time. */
const CLEAR_CHUNK = 1000;

/** An item's record key. */
export function levelKey(key: string): Buffer {
  return Buffer.from(ITEM_PREFIX + key, 'utf8');
}

/** An item's index entry key, which names the file of its value when it has one. */
export function blobKey(key: string): Buffer {
  return Buffer.from(BLOB_PREFIX + key, 'utf8');
}

/** The keys from `prefix` + `start` up to, not including, the first key past every key that starts with it. */
export function range(prefix: string, start: string): { gte: Buffer; lt: Buffer } {
  const gte = Buffer.from(prefix + start, 'utf8');
  // No UTF-8 byte is 0xFF, so this bound follows every key that starts with `gte`.
  return { gte, lt: Buffer.concat([gte, Buffer.from([0xff])]) };
}

/** The same item's key under the other one-byte prefix: its record's key for its index entry's, and the other way round. */
export function withPrefix(prefix: string, key: Buffer): Buffer {
  return Buffer.concat([Buffer.from(prefix), key.subarray(1)]);
}

/** Hands an iterator's entries to `each` in chunks of {@link CLEAR_CHUNK}, and closes it whatever happens. */
export async function inChunks<T>(
  iterator: { nextv(size: number): Promise<T[]>; close(): Promise<void> },
  each: (chunk: T[]) => Promise<void> | void,
): Promise<void> {
  try {
    for (;;) {
      const chunk = await iterator.nextv(CLEAR_CHUNK);
      if (chunk.length === 0) return;
      await each(chunk);
    }
  } finally {
    await iterator.close();
  }
}

/** Whether a record carries expiry times; a record that does not never expires. */
function expires(record: StoredRecord<unknown>): boolean {
  return record.expiresAtMs !== undefined;
}

/** Writes a record's header (version, `modified`, encoding name, expiry times) into `out`; returns where the rest begins. */
function writeHeader(out: Buffer, version: number, record: StoredRecord<{ readonly encoding: string }>): number {
  const { encoding } = record.value;
  out[0] = version;
  out.writeDoubleLE(record.modified, 1);
  out[9] = encoding.length;
  out.write(encoding, HEADER_BYTES, 'latin1');
  const at = HEADER_BYTES + encoding.length;
  if (!expires(record)) return at;
  out.writeDoubleLE(record.expiresAtMs!, at);
  out.writeDoubleLE(record.staleUntilMs ?? record.expiresAtMs!, at + 8);
  return at + EXPIRY_BYTES;
}

/** The version-1 (or, with expiry, version-3) record of a value kept inside LevelDB. */
export function encodeRecord(record: StoredRecord<EncodedValue>): Buffer {
  const { encoding, bytes } = record.value;
  const extra = expires(record) ? EXPIRY_BYTES : 0;
  // Not from the shared pool: a record kept in memory must not keep a pool slab of other records alive.
  const out = Buffer.allocUnsafeSlow(HEADER_BYTES + encoding.length + extra + bytes.byteLength);
  out.set(bytes, writeHeader(out, extra ? EXPIRING_RECORD_VERSION : RECORD_VERSION, record));
  return out;
}

/** The version-2 (or, with expiry, version-4) record of a value kept in the file `blob`: its bytes are not in it. */
export function encodeBlobRecord(record: StoredRecord<EncodedValue>, blob: string): Buffer {
  return encodeFileRecord(record, blob, record.value.bytes.byteLength);
}

/** Like {@link encodeBlobRecord}, for a value of `lengthBytes` (at most 4 GiB − 1) that is already in its file. */
export function encodeFileRecord(record: StoredRecord<{ readonly encoding: string }>, blob: string, lengthBytes: number): Buffer {
  const extra = expires(record) ? EXPIRY_BYTES : 0;
  const out = Buffer.allocUnsafe(HEADER_BYTES + record.value.encoding.length + extra + 4 + blob.length);
  const at = writeHeader(out, extra ? EXPIRING_BLOB_RECORD_VERSION : BLOB_RECORD_VERSION, record);
  out.writeUInt32LE(lengthBytes, at);
  out.write(blob, at + 4, 'latin1');
  return out;
}

function damaged(): CacheError {
  return new CacheError('CACHE_CORRUPT', 'A stored record is damaged or was written by a newer version of hoard.');
}

/** What a version-2 or 4 record holds after its header: the value's length and the name of the file that holds it. */
export function decodePointer(rest: Buffer): { length: number; name: string } {
  if (rest.length < 5) throw damaged();
  return { length: rest.readUInt32LE(0), name: rest.toString('latin1', 4) };
}

/** A record's decoded header, and the rest of it. */
export interface RecordFields {
  version: number;
  modified: number;
  encoding: string;
  /** Whether the value is in a file (versions 2 and 4): `bytes` then holds the pointer to it. */
  inFile: boolean;
  expiresAtMs: number | undefined;
  staleUntilMs: number | undefined;
  /** The value itself in versions 1 and 3, the pointer to its file in versions 2 and 4. */
  bytes: Buffer;
}

/** A record's fields. */
export function decodeFields(raw: Buffer): RecordFields {
  const version = raw[0]!;
  if (raw.length < HEADER_BYTES || version < RECORD_VERSION || version > EXPIRING_BLOB_RECORD_VERSION) throw damaged();
  const nameEnd = HEADER_BYTES + raw[9]!;
  const expiring = version >= EXPIRING_RECORD_VERSION;
  const end = nameEnd + (expiring ? EXPIRY_BYTES : 0);
  if (raw.length < end) throw damaged();
  return {
    version,
    modified: raw.readDoubleLE(1),
    encoding: raw.toString('latin1', HEADER_BYTES, nameEnd),
    inFile: version === BLOB_RECORD_VERSION || version === EXPIRING_BLOB_RECORD_VERSION,
    expiresAtMs: expiring ? raw.readDoubleLE(nameEnd) : undefined,
    staleUntilMs: expiring ? raw.readDoubleLE(nameEnd + 8) : undefined,
    bytes: raw.subarray(end),
  };
}

/** The record that `fields` and the value's bytes make; expiry times only when it has them. */
export function recordOf(fields: RecordFields, bytes: Uint8Array): StoredRecord<EncodedValue> {
  const { modified, encoding, expiresAtMs, staleUntilMs } = fields;
  return expiresAtMs === undefined ? { modified, value: { encoding, bytes } } : { modified, value: { encoding, bytes }, expiresAtMs, staleUntilMs };
}

/**
 * A record kept inside LevelDB (version 1 or 3) as the record it encodes.
 * @throws CacheError `CACHE_CORRUPT` when `raw` is not a whole version-1 or 3 record.
 */
export function decodeRecord(raw: Buffer): StoredRecord<EncodedValue> {
  const fields = decodeFields(raw);
  if (fields.inFile) throw damaged();
  return recordOf(fields, fields.bytes);
}

/** What an item counts for: its record's key and value, and its file. */
export function countedBytes(key: Buffer, raw: Buffer): number {
  const fields = decodeFields(raw);
  return key.length + raw.length + (fields.inFile ? decodePointer(fields.bytes).length : 0);
}

/** An item's meta entry (`t`): what it counts for, its recency bucket, and, for an item that expires, `staleUntilMs`. */
export interface ItemMeta {
  sizeBytes: number;
  accessedAtMs: number;
  staleUntilMs: number | undefined;
}

export function encodeMeta(meta: ItemMeta): Buffer {
  const out = Buffer.allocUnsafe(meta.staleUntilMs === undefined ? 16 : 24);
  out.writeDoubleLE(meta.sizeBytes, 0);
  out.writeDoubleLE(meta.accessedAtMs, 8);
  if (meta.staleUntilMs !== undefined) out.writeDoubleLE(meta.staleUntilMs, 16);
  return out;
}

/** @throws CacheError `CACHE_CORRUPT` when `raw` is not a meta entry. */
export function decodeMeta(raw: Buffer): ItemMeta {
  if (raw.length !== 16 && raw.length !== 24) throw damaged();
  return { sizeBytes: raw.readDoubleLE(0), accessedAtMs: raw.readDoubleLE(8), staleUntilMs: raw.length === 24 ? raw.readDoubleLE(16) : undefined };
}

/** A scope's counter entry (`c`): its bytes and items. */
export function encodeCounter(usage: { bytes: number; items: number }): Buffer {
  const out = Buffer.allocUnsafe(16);
  out.writeDoubleLE(usage.bytes, 0);
  out.writeDoubleLE(usage.items, 8);
  return out;
}

export function decodeCounter(raw: Buffer): { bytes: number; items: number } {
  if (raw.length !== 16) throw damaged();
  return { bytes: raw.readDoubleLE(0), items: raw.readDoubleLE(8) };
}

/** The key of a top-level scope's counter entry; `segment` is the scope's escaped name, as in item keys. */
export function counterKey(segment: string): Buffer {
  return Buffer.from(COUNTER_PREFIX + segment, 'utf8');
}

/** The escaped name of the top-level scope of an item key (the text before its first `/`), or `''` for the root scope's own. */
export function topSegment(key: string): string {
  const slash = key.indexOf('/');
  return slash < 0 || slash > key.indexOf(':') ? '' : key.slice(0, slash);
}

/** An index key: a one-byte prefix, a time in milliseconds as a 48-bit big-endian integer, and an item key. */
export function indexKey(prefix: string, ms: number, key: string): Buffer {
  const out = Buffer.allocUnsafe(7 + Buffer.byteLength(key));
  out.write(prefix, 0, 'latin1');
  out.writeUIntBE(clampMs(ms), 1, 6);
  out.write(key, 7, 'utf8');
  return out;
}

/** The first index key past every one whose time is at or before `ms`. */
export function indexBound(prefix: string, ms: number): Buffer {
  const out = Buffer.allocUnsafe(7);
  out.write(prefix, 0, 'latin1');
  // The keys of time `ms` all follow `ms`'s bare 7 bytes, and precede `ms + 1`'s.
  if (clampMs(ms) === MAX_INDEX_MS) return Buffer.from([prefix.charCodeAt(0) + 1]);
  out.writeUIntBE(clampMs(ms) + 1, 1, 6);
  return out;
}

/** The item key of an index key. */
export function indexedKey(indexKeyBytes: Buffer): string {
  return indexKeyBytes.toString('utf8', 7);
}

function clampMs(ms: number): number {
  return Math.min(MAX_INDEX_MS, Math.max(0, Math.floor(ms)));
}
