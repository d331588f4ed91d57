import { childScope, itemKey, ROOT_SCOPE, type Scope } from './scope-path.js';
import type { Store, StoredRecord, StoreListedItem, StoreListing } from './store.js';

interface Node<V> {
  items: Map<string, StoredRecord<V>>;
  children: Map<string, Node<V>>;
}

function emptyNode<V>(): Node<V> {
  return { items: new Map(), children: new Map() };
}

/** Compares by code point, which is the order of the UTF-8 bytes a LevelDB key is stored as. */
function compareKeys(a: string, b: string): number {
  const length = Math.min(a.length, b.length);
  for (let index = 0; index < length; index++) {
    const x = a.codePointAt(index)!;
    const y = b.codePointAt(index)!;
    if (x !== y) return x - y;
    if (x > 0xffff) index++;
  }
  return a.length - b.length;
}

/** One entry of a scope's listing: an item (its key in the scope starts with `:`) or a nested scope (ends with `/`). */
interface Entry {
  /** The entry's storage key within the scope: `:`+escaped id, or escaped name+`/`. */
  rest: string;
  id?: string;
  scope?: string;
}

/**
 * A cursor names the last key a page gave, as base64url of its UTF-8 bytes (as LevelStore's do), here checked to
 * be an entry of `scope`.
 * @throws TypeError for anything else.
 */
export function decodeListCursor(scope: Scope, cursor: string): string {
  const key = Buffer.from(cursor, 'base64url').toString('utf8');
  const rest = key.startsWith(scope.prefix) ? key.slice(scope.prefix.length) : undefined;
  const entry = rest !== undefined && (rest.startsWith(':') || /^[^/:]+\/$/.test(rest));
  if (!entry || Buffer.from(key, 'utf8').toString('base64url') !== cursor) throw new TypeError('Not a cursor of this scope.');
  return rest;
}

function encodeListCursor(scope: Scope, rest: string): string {
  return Buffer.from(scope.prefix + rest, 'utf8').toString('base64url');
}

/**
 * A {@link Store} in a tree of maps, one node a scope, so that clearing a scope drops its subtree at once. A node
 * with no items left in its subtree is dropped, so that a listing names only scopes that hold items.
 */
export class MemoryStore<V> implements Store<V> {
  #root: Node<V> = emptyNode();

  #find(scope: Scope, create: boolean): Node<V> | undefined {
    let node = this.#root;
    for (const name of scope.path) {
      let child = node.children.get(name);
      if (!child) {
        if (!create) return undefined;
        node.children.set(name, (child = emptyNode()));
      }
      node = child;
    }
    return node;
  }

  /** Drops the nodes along `scope`'s path that hold nothing any more, deepest first. */
  #prune(scope: Scope): void {
    const path: Node<V>[] = [this.#root];
    for (const name of scope.path) {
      const child = path.at(-1)!.children.get(name);
      if (!child) return;
      path.push(child);
    }
    for (let depth = scope.path.length; depth > 0; depth--) {
      const node = path[depth]!;
      if (node.items.size > 0 || node.children.size > 0) return;
      path[depth - 1]!.children.delete(scope.path[depth - 1]!);
    }
  }

  read(scope: Scope, id: string): StoredRecord<V> | undefined {
    return this.#find(scope, false)?.items.get(id);
  }

  async write(scope: Scope, id: string, record: StoredRecord<V>): Promise<void> {
    this.#find(scope, true)!.items.set(id, record);
  }

  async delete(scope: Scope, id: string): Promise<void> {
    const node = this.#find(scope, false);
    if (!node?.items.delete(id)) return;
    if (node.items.size === 0 && node.children.size === 0) this.#prune(scope);
  }

  async clear(scope: Scope): Promise<void> {
    const node = this.#find(scope, false);
    if (!node) return;
    node.items = new Map();
    node.children = new Map();
    this.#prune(scope);
  }

  /**
   * One page of the scope's entries in key order after the cursor. A page looks at every entry of the scope's own
   * node once (not its subtree) and keeps at most `limit` of them (memory bounded by the page; time linear in the
   * node's size), so entries written or deleted between pages never shift the ones after the cursor.
   */
  async list(scope: Scope, options: { cursor?: string; limit: number }): Promise<StoreListing> {
    const after = options.cursor === undefined ? undefined : decodeListCursor(scope, options.cursor);
    const node = this.#find(scope, false);
    if (!node) return { items: [], scopes: [], cursor: null };
    const { limit } = options;
    let kept: Entry[] = [];
    let more = false;
    const consider = (entry: Entry): void => {
      if (after !== undefined && compareKeys(entry.rest, after) <= 0) return;
      kept.push(entry);
      if (kept.length >= 2 * limit + 1) {
        kept.sort((a, b) => compareKeys(a.rest, b.rest));
        kept = kept.slice(0, limit + 1);
      }
    };
    for (const id of node.items.keys()) consider({ rest: itemKey(ROOT_SCOPE, id), id });
    for (const name of node.children.keys()) consider({ rest: childScope(ROOT_SCOPE, name).prefix, scope: name });
    kept.sort((a, b) => compareKeys(a.rest, b.rest));
    if (kept.length > limit) {
      more = true;
      kept = kept.slice(0, limit);
    }
    const items: StoreListedItem[] = [];
    const scopes: string[] = [];
    for (const entry of kept) {
      if (entry.scope !== undefined) {
        scopes.push(entry.scope);
        continue;
      }
      const { modified, expiresAtMs } = node.items.get(entry.id!)!;
      items.push(expiresAtMs === undefined ? { id: entry.id!, sizeBytes: 0, modified } : { id: entry.id!, sizeBytes: 0, modified, expiresAtMs });
    }
    return { items, scopes, cursor: more ? encodeListCursor(scope, kept.at(-1)!.rest) : null };
  }

  /** Walks the whole tree: up to `limit` keys of items past their stale time at `nowMs`. */
  async expired(nowMs: number, limit: number): Promise<string[]> {
    const keys: string[] = [];
    const walk = (node: Node<V>, scope: Scope): void => {
      for (const [id, record] of node.items) {
        if (keys.length >= limit) return;
        const until = record.staleUntilMs ?? record.expiresAtMs;
        if (until !== undefined && until <= nowMs) keys.push(itemKey(scope, id));
      }
      for (const [name, child] of node.children) {
        if (keys.length >= limit) return;
        walk(child, childScope(scope, name));
      }
    };
    walk(this.#root, ROOT_SCOPE);
    return keys;
  }

  async close(): Promise<void> {
    this.#root = emptyNode();
  }
}
