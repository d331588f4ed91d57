import { describe, expect, test } from 'vitest';
import { BUFFER_ENTRY_BYTES, MemoryLayer, PACKED_ENTRY_BYTES, PACKED_MAX_BYTES } from '../../src/level/memory-layer.js';

const record = (bytes: Uint8Array, modified = 1.5) => ({ modified, value: { encoding: 'binary', bytes } });

describe('MemoryLayer', () => {
  test('a small value is kept packed and handed out as a fresh copy on each hit', () => {
    const layer = new MemoryLayer({ maxBytes: 1024 * 1024 });
    const bytes = Uint8Array.from({ length: 100 }, (_, n) => (n * 7) % 256);
    layer.set(':k', record(bytes));
    const first = layer.get(':k')!;
    expect(first).toMatchObject({ modified: 1.5, value: { encoding: 'binary' } });
    expect(Buffer.from(first.value.bytes).equals(bytes)).toBe(true);
    first.value.bytes.fill(0);
    bytes.fill(1);
    expect(Buffer.from(layer.get(':k')!.value.bytes).equals(Uint8Array.from({ length: 100 }, (_, n) => (n * 7) % 256))).toBe(true);
  });

  test('an entry counts its key, its value and the objects that hold them, so the budget bounds what it keeps', () => {
    const layer = new MemoryLayer({ maxBytes: 1024 * 1024 });
    layer.set(':key', record(new Uint8Array(100)));
    expect(layer.bytes).toBe(100 + 2 * ':key'.length + 2 * 'binary'.length + PACKED_ENTRY_BYTES);
    for (let n = 0; n < 10_000; n++) layer.set(`:k${n}`, record(new Uint8Array(100)));
    expect(layer.bytes).toBeLessThanOrEqual(1024 * 1024);
    // Only about 2,700 of the 10,000 fit, where counting value and key alone would have kept all of them.
    expect(layer.get(':k0')).toBeUndefined();
    expect(layer.get(':k9999')).toBeDefined();
  });

  test('a larger value keeps a buffer of its own, cut out of a larger one it was a view of', () => {
    const layer = new MemoryLayer({ maxBytes: 8 * 1024 * 1024 });
    const backing = new Uint8Array(64 * 1024).fill(3);
    layer.set(':big', record(backing.subarray(0, PACKED_MAX_BYTES)));
    const kept = layer.get(':big')!.value.bytes;
    expect(kept.byteLength).toBe(PACKED_MAX_BYTES);
    expect(kept.buffer.byteLength).toBe(PACKED_MAX_BYTES);
    expect(layer.bytes).toBe(PACKED_MAX_BYTES + 2 * ':big'.length + 2 * 'binary'.length + BUFFER_ENTRY_BYTES);
  });
});
