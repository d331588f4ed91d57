import type { EncodedValue, StoredRecord } from '../store.js';
import { LruMap } from './lru-map.js';

/**
 * Values smaller than this are kept as Latin-1 strings on V8's heap rather than as buffers: a buffer of its own
 * costs about 450 bytes beyond its contents (its `ArrayBuffer`, backing store and allocator headers), four times
 * a 100-byte value, and a buffer cut from Node's pool keeps the whole 8 KiB slab alive. Each hit then copies the
 * value out (about 0.2 µs for 100 bytes); a larger value keeps its buffer, which a hit hands out as it is, since a
 * copy of 1 KiB costs about 0.6 µs where the buffer's own overhead is under half its size.
 */
export const PACKED_MAX_BYTES = 512;
/**
 * What a packed entry costs beyond its value's and its key's characters, measured on Node 20 (64-bit): the
 * map's node (72 bytes) and its slot in the `Map` (about 40), the record (64, and 16 for each of its times), the
 * headers of the two strings (16 each), with a margin for their rounding and for the old space's fragmentation.
 */
export const PACKED_ENTRY_BYTES = 256;
/** What an entry that keeps a buffer costs beyond the buffer's memory: the packed entry's objects and the buffer's own. */
export const BUFFER_ENTRY_BYTES = PACKED_ENTRY_BYTES + 512;

/** A small value as the layer keeps it: one string holds its bytes, one char per byte. */
class PackedRecord {
  constructor(
    readonly modified: number,
    readonly encoding: string,
    readonly latin1: string,
    readonly expiresAtMs: number | undefined,
    readonly staleUntilMs: number | undefined,
  ) {}
}

/** A string's size on V8's heap, counted generously: two bytes a char, as for a string that is not Latin-1. */
function stringBytes(text: string): number {
  return 2 * text.length;
}

function ownCopy(bytes: Uint8Array): Buffer {
  const copy = Buffer.allocUnsafeSlow(bytes.byteLength);
  copy.set(bytes);
  return copy;
}

/**
 * The in-memory layer of recently used records, within a byte budget that counts what each entry costs the
 * process: its key, its value's bytes and the objects that hold them. A record handed out is a fresh copy
 * for a small value, and the kept buffer itself for a larger one, which callers must not change.
 */
export class MemoryLayer {
  readonly #entries: LruMap<string, PackedRecord | StoredRecord<EncodedValue>>;
  /** The last encoding name kept, shared by the records that have the same: most caches use one or two. */
  #encoding = '';

  constructor(options: { maxBytes: number }) {
    this.#entries = new LruMap({ maxBytes: options.maxBytes });
  }

  /** The bytes the entries kept are counted as. */
  get bytes(): number {
    return this.#entries.bytes;
  }

  get(key: string): StoredRecord<EncodedValue> | undefined {
    return this.#unpack(this.#entries.get(key));
  }

  /** Like `get`, and calls `firstUse` when the record was not yet got or set with this `mark` (see {@link LruMap.getMarked}). */
  getMarked(key: string, mark: number, firstUse: (key: string) => void): StoredRecord<EncodedValue> | undefined {
    return this.#unpack(this.#entries.getMarked(key, mark, firstUse));
  }

  #unpack(kept: PackedRecord | StoredRecord<EncodedValue> | undefined): StoredRecord<EncodedValue> | undefined {
    if (!(kept instanceof PackedRecord)) return kept;
    const value = { encoding: kept.encoding, bytes: Buffer.from(kept.latin1, 'latin1') };
    if (kept.expiresAtMs === undefined) return { modified: kept.modified, value };
    return { modified: kept.modified, value, expiresAtMs: kept.expiresAtMs, staleUntilMs: kept.staleUntilMs };
  }

  /**
   * Keeps `record` (copying what it keeps of it), marked with `mark` (see `getMarked`), dropping the least recently
   * used records over the budget.
   */
  set(key: string, record: StoredRecord<EncodedValue>, mark?: number): void {
    const { modified, expiresAtMs } = record;
    const staleUntilMs = expiresAtMs === undefined ? undefined : (record.staleUntilMs ?? expiresAtMs);
    const { bytes } = record.value;
    const encoding = record.value.encoding === this.#encoding ? this.#encoding : (this.#encoding = record.value.encoding);
    const overhead = stringBytes(key) + stringBytes(encoding);
    if (bytes.byteLength < PACKED_MAX_BYTES) {
      const latin1 = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('latin1');
      this.#entries.set(key, new PackedRecord(modified, encoding, latin1, expiresAtMs, staleUntilMs), latin1.length + overhead + PACKED_ENTRY_BYTES, mark);
      return;
    }
    // A view that would keep a much larger buffer alive is copied to a buffer of its own (not from the pool).
    const own = bytes.buffer.byteLength > 2 * bytes.byteLength ? ownCopy(bytes) : bytes;
    const value = { encoding, bytes: own };
    // A value kept in a file keeps the file's name, so that a hit can still be answered by reference.
    const { file } = record;
    const kept =
      file === undefined
        ? expiresAtMs === undefined
          ? { modified, value }
          : { modified, value, expiresAtMs, staleUntilMs }
        : expiresAtMs === undefined
          ? { modified, value, file }
          : { modified, value, expiresAtMs, staleUntilMs, file };
    this.#entries.set(key, kept, own.buffer.byteLength + overhead + BUFFER_ENTRY_BYTES, mark);
  }

  delete(key: string): void {
    this.#entries.delete(key);
  }

  /** Drops every record whose key passes `test`. */
  deleteWhere(test: (key: string) => boolean): void {
    this.#entries.deleteWhere(test);
  }
}
