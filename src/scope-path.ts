/**
 * How a scope path and an item id become one storage key.
 *
 * A key is each scope name escaped and followed by `/`, then `:`, then the escaped id:
 * scope `['a', 'b']` + id `x` is `a/b/:x`. In scope names `%`, `/` and `:` are escaped as
 * `%25`, `%2F` and `%3A`; in ids only `%` is. Lone UTF-16 surrogates in either are escaped as
 * `%uXXXX`, so every key is well-formed Unicode and survives UTF-8. Because a scope name never
 * holds a bare `/` or `:`, the first `:` ends the scope path: the encoding is injective, item ids
 * never collide with scope names, and the keys of a scope's whole subtree are exactly those that
 * start with its prefix (`a/b/`).
 */

/** A scope path with its key prefix computed once. */
export interface Scope {
  readonly path: readonly string[];
  /** The prefix shared by the keys of every item in this scope and its nested scopes. */
  readonly prefix: string;
}

const LONE_SURROGATE = '[\\uD800-\\uDBFF](?![\\uDC00-\\uDFFF])|(?<![\\uD800-\\uDBFF])[\\uDC00-\\uDFFF]';
const SCOPE_SPECIAL = new RegExp(`[%/:]|${LONE_SURROGATE}`, 'g');
const ID_SPECIAL = new RegExp(`%|${LONE_SURROGATE}`, 'g');
const ID_SPECIAL_TEST = new RegExp(`%|${LONE_SURROGATE}`);

function escapeChar(char: string): string {
  const unit = char.charCodeAt(0);
  if (unit >= 0xd800 && unit <= 0xdfff) return `%u${unit.toString(16).toUpperCase()}`;
  return `%${unit.toString(16).toUpperCase().padStart(2, '0')}`;
}

/** The root scope: no names, empty prefix. */
export const ROOT_SCOPE: Scope = Object.freeze({ path: Object.freeze([]), prefix: '' });

/** The scope named `name` nested in `parent`. */
export function childScope(parent: Scope, name: string): Scope {
  return Object.freeze({
    path: Object.freeze([...parent.path, name]),
    prefix: `${parent.prefix}${name.replace(SCOPE_SPECIAL, escapeChar)}/`,
  });
}

/** The scope for a path of names. */
export function scopeOf(path: readonly string[]): Scope {
  if (path.length === 0) return ROOT_SCOPE;
  // One pass: folding childScope over a long path would copy the path once per name.
  let prefix = '';
  for (const name of path) prefix += `${name.replace(SCOPE_SPECIAL, escapeChar)}/`;
  return Object.freeze({ path: Object.freeze([...path]), prefix });
}

/** The storage key of item `id` in `scope`. */
export function itemKey(scope: Scope, id: string): string {
  return ID_SPECIAL_TEST.test(id) ? `${scope.prefix}:${id.replace(ID_SPECIAL, escapeChar)}` : `${scope.prefix}:${id}`;
}

const ESCAPE = /%(?:u([0-9A-F]{4})|([0-9A-F]{2}))/g;

function unescape(text: string): string {
  return text.includes('%') ? text.replace(ESCAPE, (_, unit?: string, byte?: string) => String.fromCharCode(parseInt(unit ?? byte!, 16))) : text;
}

/** The scope and id a storage key was made from: the inverse of {@link itemKey}. */
export function parseItemKey(key: string): { scope: Scope; id: string } {
  const colon = key.indexOf(':');
  if (colon < 0) throw new TypeError(`Not an item key: ${key}`);
  const names = colon === 0 ? [] : key.slice(0, colon - 1).split('/').map(unescape);
  return { scope: scopeOf(names), id: unescape(key.slice(colon + 1)) };
}

/** The name of the top-level scope an item key belongs to; `''` for an item of the root scope. */
export function topScopeName(key: string): string {
  const slash = key.indexOf('/');
  const colon = key.indexOf(':');
  return slash < 0 || slash > colon ? '' : unescape(key.slice(0, slash));
}
