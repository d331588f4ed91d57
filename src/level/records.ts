import { CacheError } from '../errors.js';
import type { EncodedValue, StoredRecord } from '../store.js';

/**
 * The LevelDB layout. Item keys are `i` + the UTF-8 of `scope-path.ts`'s key; `m` + name holds metadata
 * (`mformat`: the layout version). An item's stored value is one record:
 * byte 0 the record version, bytes 1-8 `modified` as a little-endian float64, byte 9 the length n of
 * the encoding name, then n bytes of the name in ASCII; then, in version 1, the value's bytes; in version 2
 * (a value of `BLOB_MIN_BYTES`, in `blob-files.ts`, or more), the value's length as a little-endian uint32 and the
 * name of the file in `blobs/` that holds it, in ASCII. Such an item also has `b` + its key, whose value is that
 * file name: the index that `clear` and the sweep of unreferenced files read. Layout 2 is layout 1 with
 * version 2 records, and a database takes it with its first large value.
 */
export const ITEM_PREFIX = 'i';
export const BLOB_PREFIX = 'b';
export const FORMAT_KEY = Buffer.from('mformat');
export const FORMAT_PLAIN = '1';
export const FORMAT_BLOBS = '2';
export const RECORD_VERSION = 1;
export const BLOB_RECORD_VERSION = 2;
const HEADER_BYTES = 10;
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

/** Writes a record's header (version, `modified`, encoding name) into `out`; returns where the rest begins. */
function writeHeader(out: Buffer, version: number, record: StoredRecord<EncodedValue>): number {
  const { encoding } = record.value;
  out[0] = version;
  out.writeDoubleLE(record.modified, 1);
  out[9] = encoding.length;
  out.write(encoding, HEADER_BYTES, 'latin1');
  return HEADER_BYTES + encoding.length;
}

/** The version-1 record of a value kept inside LevelDB. */
export function encodeRecord(record: StoredRecord<EncodedValue>): Buffer {
  const { encoding, bytes } = record.value;
  // Not from the shared pool: a record kept in memory must not keep a pool slab of other records alive.
  const out = Buffer.allocUnsafeSlow(HEADER_BYTES + encoding.length + bytes.byteLength);
  out.set(bytes, writeHeader(out, RECORD_VERSION, record));
  return out;
}

/** The record of a value kept in the file `blob`: its bytes are not in it. */
export function encodeBlobRecord(record: StoredRecord<EncodedValue>, blob: string): Buffer {
  const out = Buffer.allocUnsafe(HEADER_BYTES + record.value.encoding.length + 4 + blob.length);
  const at = writeHeader(out, BLOB_RECORD_VERSION, record);
  out.writeUInt32LE(record.value.bytes.byteLength, at);
  out.write(blob, at + 4, 'latin1');
  return out;
}

function damaged(): CacheError {
  return new CacheError('CACHE_CORRUPT', 'A stored record is damaged or was written by a newer version of hoard.');
}

/** What a version-2 record holds after its header: the value's length and the name of the file that holds it. */
export function decodePointer(rest: Buffer): { length: number; name: string } {
  if (rest.length < 5) throw damaged();
  return { length: rest.readUInt32LE(0), name: rest.toString('latin1', 4) };
}

/** A record's fields; `bytes` is the value itself in version 1, and the rest of the record in version 2. */
export function decodeFields(raw: Buffer): { version: number; modified: number; encoding: string; bytes: Buffer } {
  const version = raw[0];
  if (raw.length < HEADER_BYTES || (version !== RECORD_VERSION && version !== BLOB_RECORD_VERSION) || raw.length < HEADER_BYTES + raw[9]!) {
    throw damaged();
  }
  const nameEnd = HEADER_BYTES + raw[9]!;
  return { version, modified: raw.readDoubleLE(1), encoding: raw.toString('latin1', HEADER_BYTES, nameEnd), bytes: raw.subarray(nameEnd) };
}

/**
 * A version-1 record's fields as the record they encode.
 * @throws CacheError `CACHE_CORRUPT` when `raw` is not a whole version-1 record.
 */
export function decodeRecord(raw: Buffer): StoredRecord<EncodedValue> {
  const { version, modified, encoding, bytes } = decodeFields(raw);
  if (version !== RECORD_VERSION) throw damaged();
  return { modified, value: { encoding, bytes } };
}
