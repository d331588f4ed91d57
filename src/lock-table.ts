/**
 * Per-item reader/writer locks and per-scope subtree locks, granted first come, first served.
 *
 * Keys come from `scope-path.ts`: an item lock is taken on an item key, a subtree lock on a scope
 * prefix, and a subtree lock covers every item key that starts with its prefix. A request waits for
 * every held lock and every earlier waiting request that it conflicts with, and for nothing else, so
 * a stream of readers cannot starve a writer and locks on unrelated items never wait for each other.
 * The table does not know who holds what: each holder keeps its own leases and releases them (the daemon's
 * session does so for a connection), and {@link LockTable.rejectWaiters} ends every wait when the cache closes.
 */

export type LockMode = 'shared' | 'exclusive' | 'subtree';

/** A granted lock. */
export interface Lease {
  readonly key: string;
  readonly mode: LockMode;
  /** Whether the lease is still held. */
  readonly held: boolean;
  /** Releases the lock; calling it again does nothing. */
  release(): void;
}

export interface AcquireOptions {
  /**
   * Aborts the wait: the request leaves the queue and the call rejects with the signal's reason. A function is
   * called only if the request has to wait, for callers that would otherwise make a signal per request.
   */
  signal?: SignalSource;
}

export type SignalSource = AbortSignal | (() => AbortSignal) | undefined;

/** A point-in-time count of what the table holds, for status reports. */
export interface LockTableStats {
  held: number;
  waiting: number;
}

type State = 'waiting' | 'held' | 'done';

class Request implements Lease {
  state: State = 'waiting';
  /** How many subtree requests (or, for a subtree request, any requests) must end before this one. */
  blockers = 0;
  /** Requests whose `blockers` count this one. */
  dependents: Request[] = [];
  resolve?: (lease: Lease) => void;
  reject?: (reason: unknown) => void;
  unlisten?: () => void;

  constructor(
    readonly table: LockTable,
    readonly key: string,
    readonly mode: LockMode,
  ) {}

  get held(): boolean {
    return this.state === 'held';
  }

  release(): void {
    if (this.state === 'held') this.table._end(this);
  }
}

interface ItemLock {
  holders: Set<Request>;
  exclusive: boolean;
  queue: Request[];
}

/** The locks of one cache: see the module comment for the rules. */
export class LockTable {
  readonly #items = new Map<string, ItemLock>();
  /** Held and waiting subtree requests, in arrival order. */
  readonly #subtrees: Request[] = [];
  /** The requests that wait, in arrival order. */
  readonly #waiting = new Set<Request>();
  /** How many leases are held. */
  #held = 0;

  /**
   * Waits for the lock and resolves to its lease; resolves synchronously (without a promise)
   * when the lock is free at once.
   */
  acquire(key: string, mode: LockMode, options: AcquireOptions = {}): Lease | Promise<Lease> {
    if (typeof options.signal === 'object' && options.signal.aborted) return Promise.reject(options.signal.reason);
    const request = new Request(this, key, mode);
    this.#enqueue(request);
    if (request.state === 'held') return request;
    this.#waiting.add(request);
    const signal = typeof options.signal === 'function' ? options.signal() : options.signal;
    if (signal?.aborted) {
      this.#cancel(request, signal.reason);
      return Promise.reject(signal.reason);
    }
    return new Promise<Lease>((resolve, reject) => {
      request.resolve = resolve;
      request.reject = reject;
      if (signal) {
        const onAbort = (): void => this.#cancel(request, signal.reason);
        signal.addEventListener('abort', onAbort, { once: true });
        request.unlisten = () => signal.removeEventListener('abort', onAbort);
      }
    });
  }

  /** Takes the lock only if it can be granted at once; otherwise returns `null` and queues nothing. */
  tryAcquire(key: string, mode: LockMode): Lease | null {
    if (!this.#grantableNow(key, mode)) return null;
    const request = new Request(this, key, mode);
    this.#enqueue(request);
    return request;
  }

  /** Rejects every waiting request with `reason`; held leases stay held until released. */
  rejectWaiters(reason: unknown): void {
    // Latest first, so that ending one never grants another that is about to be rejected.
    for (const request of [...this.#waiting].reverse()) this.#cancel(request, reason);
  }

  /** How many leases are held and how many requests wait. */
  stats(): LockTableStats {
    return { held: this.#held, waiting: this.#waiting.size };
  }

  #grantableNow(key: string, mode: LockMode): boolean {
    if (mode === 'subtree') {
      if (this.#subtrees.some((other) => overlaps(key, other.key))) return false;
      for (const itemKey of this.#items.keys()) if (itemKey.startsWith(key)) return false;
      return true;
    }
    if (this.#subtrees.some((subtree) => key.startsWith(subtree.key))) return false;
    const item = this.#items.get(key);
    if (!item) return true;
    return mode === 'shared' && !item.exclusive && item.queue.length === 0;
  }

  #enqueue(request: Request): void {
    if (request.mode === 'subtree') {
      for (const other of this.#subtrees) {
        if (overlaps(request.key, other.key)) this.#depend(request, other);
      }
      for (const [itemKey, item] of this.#items) {
        if (!itemKey.startsWith(request.key)) continue;
        for (const holder of item.holders) this.#depend(request, holder);
        for (const waiter of item.queue) this.#depend(request, waiter);
      }
      this.#subtrees.push(request);
      if (request.blockers === 0) this.#grant(request);
      return;
    }

    for (const subtree of this.#subtrees) {
      if (request.key.startsWith(subtree.key)) this.#depend(request, subtree);
    }
    let item = this.#items.get(request.key);
    if (!item) this.#items.set(request.key, (item = { holders: new Set(), exclusive: false, queue: [] }));
    item.queue.push(request);
    this.#pump(request.key, item);
  }

  #depend(waiter: Request, on: Request): void {
    waiter.blockers++;
    on.dependents.push(waiter);
  }

  /** Grants the waiters at the head of an item's queue that no longer conflict. */
  #pump(key: string, item: ItemLock): void {
    while (item.queue.length > 0) {
      const head = item.queue[0]!;
      if (head.blockers > 0 || item.exclusive) break;
      if (head.mode === 'exclusive' && item.holders.size > 0) break;
      item.queue.shift();
      item.holders.add(head);
      if (head.mode === 'exclusive') item.exclusive = true;
      this.#grant(head);
    }
    if (item.holders.size === 0 && item.queue.length === 0) this.#items.delete(key);
  }

  #grant(request: Request): void {
    this.#waiting.delete(request);
    this.#held++;
    request.state = 'held';
    request.unlisten?.();
    request.resolve?.(request);
  }

  #cancel(request: Request, reason: unknown): void {
    if (request.state !== 'waiting') return;
    request.unlisten?.();
    this.#remove(request);
    request.reject?.(reason);
  }

  /** Called by {@link Request.release}. */
  _end(request: Request): void {
    this.#remove(request);
  }

  #remove(request: Request): void {
    const wasHeld = request.state === 'held';
    request.state = 'done';
    if (wasHeld) this.#held--;
    else this.#waiting.delete(request);

    if (request.mode === 'subtree') {
      this.#subtrees.splice(this.#subtrees.indexOf(request), 1);
    } else {
      const item = this.#items.get(request.key)!;
      if (wasHeld) {
        item.holders.delete(request);
        if (request.mode === 'exclusive') item.exclusive = false;
      } else {
        item.queue.splice(item.queue.indexOf(request), 1);
      }
    }

    // Most requests have no dependents: then only their own item needs pumping, with no map to build.
    let touched: Map<string, ItemLock> | undefined;
    for (const dependent of request.dependents) {
      if (dependent.state !== 'waiting') continue;
      dependent.blockers--;
      if (dependent.blockers > 0) continue;
      if (dependent.mode === 'subtree') this.#grant(dependent);
      else (touched ??= new Map()).set(dependent.key, this.#items.get(dependent.key)!);
    }
    if (request.dependents.length > 0) request.dependents = [];
    const own = request.mode === 'subtree' ? undefined : this.#items.get(request.key);
    if (!touched) {
      if (own) this.#pump(request.key, own);
      return;
    }
    if (own) touched.set(request.key, own);
    for (const [key, item] of touched) this.#pump(key, item);
  }
}

/** Whether two subtree prefixes cover common items (one contains the other). */
function overlaps(a: string, b: string): boolean {
  return a.startsWith(b) || b.startsWith(a);
}
