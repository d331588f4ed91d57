import { describe, expect, test } from 'vitest';
import { childScope, scopeOf } from '../src/scope-path.js';

describe('scope paths', () => {
  test('scopeOf builds the same scope as nesting one name at a time, also for long paths', () => {
    const names = Array.from({ length: 2000 }, (_, n) => (n % 3 === 0 ? `a/b:${n}%` : `s${n}`));
    const nested = names.reduce(childScope, scopeOf([]));
    const whole = scopeOf(names);
    expect(whole.prefix).toBe(nested.prefix);
    expect(whole.path).toEqual(names);
    expect(scopeOf(Array.from({ length: 100_000 }, () => 'x')).prefix.length).toBe(200_000);
  });
});
