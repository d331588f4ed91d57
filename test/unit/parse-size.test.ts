import { describe, expect, test } from 'vitest';
import { parseSize } from '../../src/parse-size.js';

describe('parseSize', () => {
  test.each([
    ['65536', 65536],
    ['0', 0],
    ['512KiB', 512 * 1024],
    ['32 MiB', 32 * 1024 ** 2],
    ['10GiB', 10 * 1024 ** 3],
    ['10gib', 10 * 1024 ** 3],
    ['1TiB', 1024 ** 4],
    ['1.5GiB', 1.5 * 1024 ** 3],
    ['500KB', 500_000],
    ['1MB', 1_000_000],
    ['1GB', 1_000_000_000],
    ['7B', 7],
  ])('%s is %d bytes', (text, bytes) => {
    expect(parseSize(text)).toBe(bytes);
  });

  test('unlimited is Infinity only where it is allowed', () => {
    expect(parseSize('unlimited', { unlimited: true })).toBe(Infinity);
    expect(parseSize('Unlimited', { unlimited: true })).toBe(Infinity);
    expect(() => parseSize('unlimited')).toThrow(TypeError);
  });

  test.each(['', 'ten', '-1', '10 GiBs', '1e9', '10G', '0x10', 'GiB'])('%j is refused with a TypeError that says what is expected', (text) => {
    expect(() => parseSize(text)).toThrow(/expected a size such as/);
    expect(() => parseSize(text)).toThrow(TypeError);
  });
});
