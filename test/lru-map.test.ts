import { describe, expect, test } from 'vitest';
import { LruMap } from '../src/level/lru-map.js';

describe('LruMap', () => {
  test('keeps within its budget, dropping entries not used since they came round', () => {
    const map = new LruMap<string, number>({ maxBytes: 400 });
    for (const key of 'abcdefgh') map.set(key, 1, 50);
    expect([map.bytes, map.size]).toEqual([400, 8]);
    expect(map.get('a')).toBe(1);
    map.set('i', 1, 50);
    // 'a' was used, so it got a second chance; 'b', the oldest unused, went.
    expect(map.get('b')).toBeUndefined();
    expect(map.get('a')).toBe(1);
    expect(map.bytes).toBe(400);
    map.set('j', 1, 30);
    map.set('k', 1, 50);
    expect(map.bytes).toBeLessThanOrEqual(400);
    expect([map.get('j'), map.get('k'), map.get('c')]).toEqual([1, 1, undefined]);
  });

  test('does not keep an entry over an eighth of its budget, and replacing a key frees the old size', () => {
    const map = new LruMap<string, string>({ maxBytes: 800 });
    map.set('big', 'x', 101);
    expect(map.get('big')).toBeUndefined();
    map.set('k', 'old', 100);
    map.set('k', 'new', 10);
    expect([map.get('k'), map.bytes, map.size]).toEqual(['new', 10, 1]);
    map.set('a/1', 'x', 10);
    map.set('b/1', 'y', 10);
    map.deleteWhere((key) => key.startsWith('a/'));
    expect([map.get('a/1'), map.get('b/1'), map.bytes]).toEqual([undefined, 'y', 20]);
  });

  test('entries deleted from the middle leave the order of the others intact', () => {
    const map = new LruMap<string, number>({ maxBytes: 800 });
    for (const key of 'abcdefgh') map.set(key, 1, 100);
    map.delete('c');
    map.deleteWhere((key) => key === 'e');
    for (const key of 'ijkl') map.set(key, 1, 100);
    // The two deleted made room for 'i' and 'j'; then the oldest went, in order: 'a', then 'b'.
    expect([...'abdfghijkl'].map((key) => map.get(key))).toEqual([undefined, undefined, 1, 1, 1, 1, 1, 1, 1, 1]);
    expect([map.size, map.bytes]).toEqual([8, 800]);
    for (let n = 0; n < 10_000; n++) map.set(`k${n}`, n, 100);
    expect([map.size, map.bytes, map.get('k9999'), map.get('d')]).toEqual([8, 800, 9999, undefined]);
  });

  test('getMarked calls firstUse once per entry and mark, and an entry set with a mark starts with it', () => {
    const map = new LruMap<string, number>({ maxBytes: 800 });
    const used: string[] = [];
    const firstUse = (key: string): void => void used.push(key);
    map.set('a', 1, 10);
    map.set('b', 2, 10, 7);
    expect([map.getMarked('a', 7, firstUse), map.getMarked('a', 7, firstUse), map.getMarked('b', 7, firstUse)]).toEqual([1, 1, 2]);
    expect(map.getMarked('missing', 7, firstUse)).toBeUndefined();
    expect(used).toEqual(['a']);
    expect([map.getMarked('b', 8, firstUse), map.getMarked('a', 8, firstUse), map.getMarked('b', 8, firstUse)]).toEqual([2, 1, 2]);
    expect(used).toEqual(['a', 'b', 'a']);
    // Set again (a write), the entry takes the new mark.
    map.set('a', 3, 10, 9);
    expect(map.getMarked('a', 9, firstUse)).toBe(3);
    expect(used).toEqual(['a', 'b', 'a']);
  });
});
