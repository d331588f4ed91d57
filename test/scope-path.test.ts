import { describe, expect, test } from 'vitest';
import { childScope, itemKey, parseItemKey, scopeOf, topScopeName } from '../src/scope-path.js';

describe('scope paths', () => {
  test('scopeOf builds the same scope as nesting one name at a time, also for long paths', () => {
    const names = Array.from({ length: 2000 }, (_, n) => (n % 3 === 0 ? `a/b:${n}%` : `s${n}`));
    const nested = names.reduce(childScope, scopeOf([]));
    const whole = scopeOf(names);
    expect(whole.prefix).toBe(nested.prefix);
    expect(whole.path).toEqual(names);
    expect(scopeOf(Array.from({ length: 100_000 }, () => 'x')).prefix.length).toBe(200_000);
  });

  test('parseItemKey gives back the scope and id of every key, and topScopeName its first scope name', () => {
    const names = ['plain', 'a/b', 'c:d', '%25', 'x%uD800y', '\uD800', '\uDC00z', 'é'];
    for (const path of [[], ['a'], names, names.slice(2, 5)]) {
      for (const id of ['', 'id', 'a:b/c', '%', '%25', '\uD800', 'x\uDFFF', ':']) {
        const key = itemKey(scopeOf(path), id);
        const parsed = parseItemKey(key);
        expect(parsed.scope.path).toEqual(path);
        expect(parsed.scope.prefix).toBe(scopeOf(path).prefix);
        expect(parsed.id).toBe(id);
        expect(topScopeName(key)).toBe(path[0] ?? '');
      }
    }
  });
});
