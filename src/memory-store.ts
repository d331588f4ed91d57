import type { Scope } from './scope-path.js';
import type { Store, StoredRecord, StoreListing } from './store.js';

interface Node<V> {
  items: Map<string, StoredRecord<V>>;
  children: Map<string, Node<V>>;
}

function emptyNode<V>(): Node<V> {
  return { items: new Map(), children: new Map() };
}

/** A {@link Store} in a tree of maps, one node a scope, so that clearing a scope drops its subtree at once. */
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

  read(scope: Scope, id: string): StoredRecord<V> | undefined {
    return this.#find(scope, false)?.items.get(id);
  }

  async write(scope: Scope, id: string, record: StoredRecord<V>): Promise<void> {
    this.#find(scope, true)!.items.set(id, record);
  }

  async delete(scope: Scope, id: string): Promise<void> {
    this.#find(scope, false)?.items.delete(id);
  }

  async clear(scope: Scope): Promise<void> {
    const node = this.#find(scope, false);
    if (!node) return;
    node.items = new Map();
    node.children = new Map();
  }

  async list(): Promise<StoreListing> {
    return { items: [], scopes: [], cursor: null };
  }

  async close(): Promise<void> {
    this.#root = emptyNode();
  }
}
