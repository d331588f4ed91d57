/**
 * Per-item reader/writer locks and per-scope subtree locks, granted first come, first served.
 *
 * Keys come from `scope-path.ts`: an item lock is taken on an item key, a subtree lock on a scope
 * prefix, and a subtree lock covers every item key that starts with its prefix. A request waits for
 * every held lock and every earlier waiting request that it conflicts with, and for nothing else, so
 * a stream of readers cannot starve a writer and locks on unrelated items never wait for each other.
 * Each holder keeps its own leases and releases them (the daemon's session does so for a connection), and
 * {@link LockTable.rejectWaiters} ends every wait when the cache closes; the table keeps who asked only to show it
 * ({@link LockTable.snapshot}).
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

/** Who asks for a lock, as `hoard locks` shows it: a client's name and process, or the daemon's own work. */
export interface LockOwner {
  readonly name: string;
  readonly pid?: number | undefined;
}

export interface AcquireOptions {
  /** Who holds or waits for the lock, for {@link LockTable.snapshot}. */
  owner?: LockOwner | undefined;
  /**
   * Aborts the wait: the request leaves the queue and the call rejects with the signal's reason. A function is
   * called only if the request has to wait, with the function that ends the wait as an abort would (for callers
   * that would otherwise make a signal per request), and may return a signal too; so is a {@link WaitGate}'s `enter`.
   */
  signal?: SignalSource;
}

/** Ends a waiting request: it leaves the queue and its call rejects with `reason`. */
export type CancelWait = (reason: unknown) => void;

export type SignalSource = AbortSignal | ((cancel: CancelWait) => AbortSignal | undefined) | WaitGate | undefined;

/**
 * Admits a request to wait or refuses it, ends its wait without an abort signal, and hears when the wait ends:
 * how the daemon bounds a connection's waiters and drops them all at once when it closes.
 */
export interface WaitGate {
  /**
   * Called only if the request has to wait, with the function that ends its wait: returns a signal that aborts the
   * wait, if any, or throws to refuse it (the request then leaves the queue and the call rejects with what was thrown).
   */
  enter(cancel: CancelWait, mode: LockMode): AbortSignal | undefined;
  /** Called once when a wait that `enter` admitted ends, granted or not. */
  leave(): void;
}

/** One held lock or waiting request, as {@link LockTable.snapshot} shows it. */
export interface LockSnapshotEntry {
  /** The item key, or for a subtree lock the scope prefix (see `scope-path.ts`). */
  readonly key: string;
  readonly mode: LockMode;
  readonly state: 'held' | 'waiting';
  readonly owner: LockOwner | undefined;
  /** Since when it has been held (from its grant) or waiting (from its request), in milliseconds since the epoch. */
  readonly sinceMs: number;
}

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
  /** Its neighbours in its item's queue while it waits there (oldest first), so that leaving the queue is O(1). */
  previous: Request | undefined;
  next: Request | undefined;
  resolve?: (lease: Lease) => void;
  reject?: (reason: unknown) => void;
  unlisten?: () => void;

  constructor(
    readonly table: LockTable,
    readonly key: string,
    readonly mode: LockMode,
    readonly owner: LockOwner | undefined,
    /** When it was requested, and once granted after a wait, when it was granted. */
    public sinceMs: number,
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
  /** The oldest and newest waiting requests, linked through `next` and `previous`. */
  head: Request | undefined;
  tail: Request | undefined;
}

function append(item: ItemLock, request: Request): void {
  request.previous = item.tail;
  if (item.tail) item.tail.next = request;
  else item.head = request;
  item.tail = request;
}

function unlink(item: ItemLock, request: Request): void {
  if (request.previous) request.previous.next = request.next;
  else item.head = request.next;
  if (request.next) request.next.previous = request.previous;
  else item.tail = request.previous;
  request.previous = request.next = undefined;
}

/** The locks of one cache: see the module comment for the rules. */
export class LockTable {
  readonly #items = new Map<string, ItemLock>();
  /** Held and waiting subtree requests, in arrival order. */
  readonly #subtrees = new Set<Request>();
  /** The requests that wait, in arrival order. */
  readonly #waiting = new Set<Request>();
  /** How many leases are held. */
  #held = 0;

  /**
   * Waits for the lock and resolves to its lease; resolves synchronously (without a promise)
   * when the lock is free at once.
   */
  acquire(key: string, mode: LockMode, options: AcquireOptions = {}): Lease | Promise<Lease> {
    const source = options.signal;
    if (source instanceof AbortSignal && source.aborted) return Promise.reject(source.reason);
    const request = new Request(this, key, mode, options.owner, Date.now());
    this.#enqueue(request);
    if (request.state === 'held') return request;
    this.#waiting.add(request);
    let signal: AbortSignal | undefined;
    let gate: WaitGate | undefined;
    try {
      if (source === undefined || source instanceof AbortSignal) {
        signal = source;
      } else {
        const cancel: CancelWait = (reason) => this.#cancel(request, reason);
        if (typeof source === 'function') signal = source(cancel);
        else signal = (gate = source).enter(cancel, mode);
      }
    } catch (refusal) {
      this.#cancel(request, refusal);
      return Promise.reject(refusal);
    }
    if (signal?.aborted) {
      gate?.leave();
      this.#cancel(request, signal.reason);
      return Promise.reject(signal.reason);
    }
    return new Promise<Lease>((resolve, reject) => {
      request.resolve = resolve;
      request.reject = reject;
      if (!signal && !gate) return;
      const onAbort = (): void => this.#cancel(request, signal!.reason);
      signal?.addEventListener('abort', onAbort, { once: true });
      request.unlisten = () => {
        signal?.removeEventListener('abort', onAbort);
        gate?.leave();
      };
    });
  }

  /** Takes the lock only if it can be granted at once; otherwise returns `null` and queues nothing. */
  tryAcquire(key: string, mode: LockMode, options: { owner?: LockOwner | undefined } = {}): Lease | null {
    if (!this.#grantableNow(key, mode)) return null;
    const request = new Request(this, key, mode, options.owner, Date.now());
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

  /**
   * Every held lock and every waiting request, with who asked and since when: item locks item by item (holders,
   * then waiters oldest first), then subtree locks in arrival order. Its cost is proportional to what it lists.
   */
  snapshot(): LockSnapshotEntry[] {
    const entries: LockSnapshotEntry[] = [];
    const add = (request: Request): void => {
      const { key, mode, owner, sinceMs } = request;
      entries.push({ key, mode, state: request.state === 'held' ? 'held' : 'waiting', owner, sinceMs });
    };
    for (const item of this.#items.values()) {
      for (const holder of item.holders) add(holder);
      for (let waiter = item.head; waiter; waiter = waiter.next) add(waiter);
    }
    for (const subtree of this.#subtrees) add(subtree);
    return entries;
  }

  #grantableNow(key: string, mode: LockMode): boolean {
    if (mode === 'subtree') {
      for (const other of this.#subtrees) if (overlaps(key, other.key)) return false;
      for (const itemKey of this.#items.keys()) if (itemKey.startsWith(key)) return false;
      return true;
    }
    for (const subtree of this.#subtrees) if (key.startsWith(subtree.key)) return false;
    const item = this.#items.get(key);
    if (!item) return true;
    return mode === 'shared' && !item.exclusive && item.head === undefined;
  }

  #enqueue(request: Request): void {
    if (request.mode === 'subtree') {
      for (const other of this.#subtrees) {
        if (overlaps(request.key, other.key)) this.#depend(request, other);
      }
      for (const [itemKey, item] of this.#items) {
        if (!itemKey.startsWith(request.key)) continue;
        for (const holder of item.holders) this.#depend(request, holder);
        for (let waiter = item.head; waiter; waiter = waiter.next) this.#depend(request, waiter);
      }
      this.#subtrees.add(request);
      if (request.blockers === 0) this.#grant(request);
      return;
    }

    for (const subtree of this.#subtrees) {
      if (request.key.startsWith(subtree.key)) this.#depend(request, subtree);
    }
    let item = this.#items.get(request.key);
    if (!item) this.#items.set(request.key, (item = { holders: new Set(), exclusive: false, head: undefined, tail: undefined }));
    append(item, request);
    this.#pump(request.key, item);
  }

  #depend(waiter: Request, on: Request): void {
    waiter.blockers++;
    on.dependents.push(waiter);
  }

  /** Grants the waiters at the head of an item's queue that no longer conflict. */
  #pump(key: string, item: ItemLock): void {
    for (let head = item.head; head; head = item.head) {
      if (head.blockers > 0 || item.exclusive) break;
      if (head.mode === 'exclusive' && item.holders.size > 0) break;
      unlink(item, head);
      item.holders.add(head);
      if (head.mode === 'exclusive') item.exclusive = true;
      this.#grant(head);
    }
    if (item.holders.size === 0 && item.head === undefined) this.#items.delete(key);
  }

  #grant(request: Request): void {
    // A request granted at once keeps its time; one that waited (and so has a promise) is held from now.
    if (request.resolve) request.sinceMs = Date.now();
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
      this.#subtrees.delete(request);
    } else {
      const item = this.#items.get(request.key)!;
      if (wasHeld) {
        item.holders.delete(request);
        if (request.mode === 'exclusive') item.exclusive = false;
      } else {
        unlink(item, request);
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
