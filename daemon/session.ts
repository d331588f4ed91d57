import { timingSafeEqual } from 'node:crypto';
import type { CacheItem, GetSetHandle, ListPage } from '../src/cache.js';
import { CacheError, isCacheError } from '../src/errors.js';
import { listPage } from '../src/cache-view.js';
import { type LocalBackend, storedRecordOf } from '../src/local-backend.js';
import type { CancelWait, LockOwner, SignalSource, WaitGate } from '../src/lock-table.js';
import { ROOT_SCOPE, type Scope, scopeOf } from '../src/scope-path.js';
import type { EncodedRecord, EncodedValue, ReferenceRecord, StoredRecord, VerifyReport } from '../src/store.js';
import {
  Clear,
  DEFAULT_LIST_LIMIT,
  Delete,
  EnableReferences,
  type FileItem,
  Gc,
  type GcResult,
  Get,
  type GetResult,
  GetSet,
  type GetSetResult,
  HandleSet,
  type HandleSetParams,
  type InitializeParams,
  type InitializeResult,
  List,
  type ListParams,
  Locks,
  type LocksResult,
  PROTOCOL_VERSION,
  type AnyRequest,
  type RequestMethod,
  Set as SetItem,
  type SetParams,
  Shutdown,
  Status,
  type StatusResult,
  Verify,
  type WireItem,
} from '../src/wire/protocol.js';
import { invalidParams, WireError } from '../src/wire/wire-error.js';
import { LogLimiter } from './log-limiter.js';
import { logText } from './log-text.js';

/** What every connection of one daemon shares. */
export interface DaemonContext {
  readonly backend: LocalBackend<EncodedValue, EncodedValue>;
  readonly version: string;
  readonly maxMessageBytes: number;
  /** How many of one connection's requests may wait for locks at once; past it, requests that would wait are refused. */
  readonly maxWaitersPerConnection: number;
  /** The clears (subtree locks) waiting in the whole daemon, which {@link MAX_WAITING_CLEARS} bounds. */
  readonly waitingClears: { count: number };
  /** Values answered by reference since the daemon started (`daemon/status` `referenceReads`). */
  referenceReads: number;
  /**
   * Where values' files are, and the probe file whose token a client sends back to read them by path; `undefined`
   * when the daemon does not offer references.
   */
  readonly references?: { readonly probe: string; readonly blobDirectory: string; readonly token: Buffer } | undefined;
  /** Counts a `get` or `getset` result, a hit or a miss, for the top-level scope named `topScope` (`''`: the root). */
  count(topScope: string, hit: boolean): void;
  /** Issues a handle number never used before in this daemon, which doubles as the grant's token. */
  nextHandle(): number;
  /** The daemon's figures; with `scope`, that scope's too, counted from the data. */
  status(scope?: Scope): Promise<StatusResult>;
  locks(): LocksResult;
  gc(options: { dryRun: boolean }): Promise<GcResult>;
  verify(options: { fix: boolean }): Promise<VerifyReport>;
  /** Starts the daemon's one shutdown path. */
  requestStop(reason: string): void;
  log(message: string): void;
}

/**
 * How many clears one connection may have waiting, and the whole daemon: a waiting clear is ordered after every
 * earlier clear it overlaps and every waiter under its scope, so their cost grows with the square of their number
 * (10,000 queued clears took 17 s and 464 MiB), where no tool waits for more than a few at once.
 */
export const MAX_WAITING_CLEARS_PER_CONNECTION = 64;
export const MAX_WAITING_CLEARS = 1024;

/** The reason a wait ends when its request is cancelled. */
export const CANCELLED = Symbol('cancelled');

/** The longest client name kept for `daemon/locks`. */
const MAX_OWNER_NAME_LENGTH = 200;

/** Where a request's signal comes from, as a transport gives it: a function is called only if the request waits. */
export type RequestSignal = Exclude<SignalSource, WaitGate>;

/** Serves one method: answers synchronously when it can (a read whose lock is free), else with a promise. */
export type Handler<P, R> = (params: P, signal: RequestSignal) => R | Promise<R>;

type Held = { release(): void | Promise<void> } | GetSetHandle<EncodedValue>;

/**
 * One client's session, whatever its transport: the handshake, the handles it holds, the requests it waits in,
 * and a handler per method. It owns its locks and waits: closing it ends the waits, then releases the locks.
 * Params arrive checked by their method's layout; the transports turn results and errors into messages.
 */
export class Session {
  readonly #context: DaemonContext;
  /** Granted handles by number: read leases and getset handles. */
  readonly #held = new Map<number, Held>();
  readonly #getsets = new WeakSet<Held>();
  /** How to end each of the session's requests that wait for a lock, in the order they began to wait. */
  readonly #waiting = new Set<CancelWait>();
  /** How many of {@link #waiting} are clears. */
  #waitingClears = 0;
  readonly #gone = new AbortController();
  readonly #handlers = new Map<AnyRequest, Handler<never, unknown>>();
  readonly #label: string;
  /** How the log names the client: its label, and once it has said it, its name (quoted and cut short). */
  #clientName: string;
  /** Who this session's lock requests come from, for `daemon/locks`: one object for all of them. */
  #owner: LockOwner;
  /** This client's lines in the log: a few a minute, the rest counted. */
  readonly #logLimit = new LogLimiter({ write: (line) => this.#context.log(`${this.#clientName}: ${line}`) });
  #initialized = false;
  /** The scope of the last request that named one, for {@link Session.#scopeOf}. */
  #lastScope: Scope | undefined;
  /** Whether the client proved it reads the daemon's files: then values kept in files are answered by reference. */
  #references = false;
  #closing: Promise<void> | undefined;
  #markClosed!: () => void;
  /** Resolves once the session has ended and its locks are released. */
  readonly closed = new Promise<void>((resolve) => (this.#markClosed = resolve));

  constructor(context: DaemonContext, label: string) {
    this.#context = context;
    this.#label = label;
    this.#clientName = label;
    this.#owner = Object.freeze({ name: label });
    this.#on(Get, (p, signal) => this.#get(this.#scopeOf(p.scope), p.id, p.wait, signal));
    this.#on(GetSet, (p, signal) => this.#getset(this.#scopeOf(p.scope), p.id, p.wait, this.#gate(signal)));
    this.#on(HandleSet, (p) => this.#handleSet(p));
    this.#on(SetItem, (p, signal) => this.#set(p, this.#gate(signal)));
    this.#on(Delete, (p, signal) => this.#context.backend.delete(this.#scopeOf(p.scope), p.id, { signal: this.#gate(signal), owner: this.#owner }));
    this.#on(Clear, (p, signal) => this.#context.backend.clear(scopeOf(p.scope), { signal: this.#gate(signal), owner: this.#owner }));
    this.#on(List, (p) => this.#list(p));
    this.#on(Status, (p) => this.#context.status(p.scope && scopeOf(p.scope)));
    this.#on(Locks, () => this.#context.locks());
    this.#on(Gc, (p) => this.#context.gc(p));
    this.#on(Verify, (p) => this.#context.verify(p));
    this.#on(Shutdown, () => this.#shutdown());
    this.#on(EnableReferences, (p) => this.#enableReferences(p.token));
  }

  /**
   * The scope named by `path`: the one of this session's last request when the names are the same (most clients
   * use a few scopes), so that the names are escaped and the scope made once, not per request.
   */
  #scopeOf(path: readonly string[]): Scope {
    if (path.length === 0) return ROOT_SCOPE;
    const last = this.#lastScope;
    if (last !== undefined && sameNames(last.path, path)) return last;
    return (this.#lastScope = scopeOf(path));
  }

  get initialized(): boolean {
    return this.#initialized;
  }

  #on<P, R>(method: RequestMethod<P, R>, handler: Handler<P, R>): void {
    this.#handlers.set(method, handler as Handler<never, unknown>);
  }

  /** The handler of `method`; before `initialize`, only `shutdown` has one that runs. */
  handler<P, R>(method: RequestMethod<P, R>): Handler<P, R> {
    const handler = this.#handlers.get(method) as Handler<P, R> | undefined;
    if (!handler) throw new WireError('CACHE_INVALID_REQUEST', `Unknown method ${method.method}.`);
    if (!this.#initialized && method !== Shutdown) {
      throw new WireError('CACHE_NOT_INITIALIZED', `Send initialize before ${method.method}.`);
    }
    return handler;
  }

  /** Checks the handshake and, when it succeeds, lets the other calls through. */
  initialize(params: InitializeParams, transport: 'json' | 'binary'): InitializeResult {
    const { version, maxMessageBytes } = this.#context;
    if (params.protocolVersion !== PROTOCOL_VERSION) {
      throw new WireError(
        'CACHE_PROTOCOL_MISMATCH',
        `The running hoard daemon (version ${version}) speaks protocol ${PROTOCOL_VERSION}, but this client ` +
          `speaks protocol ${params.protocolVersion}. Run \`hoard stop\` to stop the old daemon; the next connect starts ` +
          'one of the client\u2019s version, and the data is kept.',
        { daemonVersion: version, daemonProtocolVersion: PROTOCOL_VERSION, clientProtocolVersion: params.protocolVersion },
      );
    }
    if (params.clientName !== undefined) this.#clientName = `${logText(params.clientName)} (${this.#label})`;
    // A pid is shown as given only when it can be a process id (a u32 in binary answers).
    const pid = Number.isSafeInteger(params.pid) && params.pid! >= 0 && params.pid! <= 0xffff_ffff ? params.pid : undefined;
    this.#owner = Object.freeze({ name: params.clientName?.slice(0, MAX_OWNER_NAME_LENGTH) ?? this.#label, pid });
    this.#initialized = true;
    const { references } = this.#context;
    const offered = params.references && references ? { references: { probe: references.probe, blobDirectory: references.blobDirectory } } : {};
    return {
      daemonVersion: version,
      protocolVersion: PROTOCOL_VERSION,
      pid: process.pid,
      capabilities: { valueTransfer: 'base64', transport, maxMessageBytes, ...offered },
    };
  }

  /** Answers by reference from now on if `token` is the probe's. */
  #enableReferences(token: string): { enabled: boolean } {
    const expected = this.#context.references?.token;
    const given = Buffer.from(token, 'utf8');
    this.#references = expected !== undefined && given.length === expected.length && timingSafeEqual(given, expected);
    return { enabled: this.#references };
  }

  /**
   * A record as this session's answers carry it: by reference when the client enabled references and the value is in
   * a file (which its handle pins), else with its bytes.
   */
  #wireItem(record: StoredRecord<EncodedValue> | ReferenceRecord | undefined | null): WireItem | null {
    if (!record) return null;
    const { file } = record;
    if (!file || !this.#references) return record as EncodedRecord;
    this.#context.referenceReads++;
    const encoding = 'value' in record ? record.value.encoding : record.encoding;
    const item: FileItem = { kind: 'file', modified: record.modified, encoding, size: file.lengthBytes, file: file.name };
    return record.expiresAtMs === undefined ? item : { ...item, expiresAtMs: record.expiresAtMs };
  }

  /**
   * Lets one request wait for a lock while fewer than the limit of the session's requests wait, and keeps the way
   * to end its wait when the session closes.
   */
  #gate(signal: RequestSignal): WaitGate {
    let cancel: CancelWait | undefined;
    let clear = false;
    const clears = this.#context.waitingClears;
    return {
      enter: (end, mode) => {
        if (this.#gone.signal.aborted) throw this.#gone.signal.reason;
        if (mode === 'subtree') {
          if (this.#waitingClears >= MAX_WAITING_CLEARS_PER_CONNECTION || clears.count >= MAX_WAITING_CLEARS) {
            const [limit, whose] =
              this.#waitingClears >= MAX_WAITING_CLEARS_PER_CONNECTION ? [MAX_WAITING_CLEARS_PER_CONNECTION, 'This connection'] : [MAX_WAITING_CLEARS, 'The daemon'];
            throw new CacheError(
              'CACHE_TOO_MANY_WAITERS',
              `${whose} already has ${limit} clears waiting for locks, the daemon's limit; wait for some of them to end before clearing again.`,
            );
          }
        }
        const limit = this.#context.maxWaitersPerConnection;
        if (this.#waiting.size >= limit) {
          throw new CacheError(
            'CACHE_TOO_MANY_WAITERS',
            `This connection already has ${limit} requests waiting for locks, the daemon's limit (--max-waiters); ` +
              'wait for some of them to end before sending more.',
          );
        }
        const aborts = typeof signal === 'function' ? signal(end) : signal;
        this.#waiting.add((cancel = end));
        if (mode === 'subtree') {
          clear = true;
          this.#waitingClears++;
          clears.count++;
        }
        return aborts;
      },
      leave: () => {
        this.#waiting.delete(cancel!);
        if (clear) {
          this.#waitingClears--;
          clears.count--;
        }
      },
    };
  }

  /**
   * Logs a line about something this session's client did, named after it; at most 20 such lines a minute per
   * connection, the rest counted in one line. Quote any text the client chose with {@link logText}.
   */
  log(message: string): void {
    this.#logLimit.log(message);
  }

  /** Turns any failure into the error the client receives, logging the unexpected ones. */
  toWireError(error: unknown): WireError {
    if (error instanceof WireError) return error;
    if (error === CANCELLED) return new WireError('CACHE_CANCELLED', 'The request was cancelled.');
    if (isCacheError(error)) return new WireError(error.code, error.message);
    this.log(`internal error: ${error instanceof Error ? error.stack : String(error)}`);
    return new WireError('CACHE_INTERNAL', 'The daemon failed unexpectedly; its log has the details.');
  }

  /** Keeps a granted handle, unless the session ended while it was being granted. */
  async #keep(entry: Held): Promise<number> {
    if (this.#gone.signal.aborted) {
      await entry.release();
      throw new CacheError('CACHE_CONNECTION_LOST', 'The connection closed.');
    }
    const number = this.#context.nextHandle();
    this.#held.set(number, entry);
    return number;
  }

  #count(scope: Scope, item: unknown): void {
    this.#context.count(scope.path[0] ?? '', item !== null && item !== undefined);
  }

  /** Reads at once when the item's shared lock is free (no promise: most reads), else waits for it (unless told not to). */
  #get(scope: Scope, id: string, wait: boolean, signal: RequestSignal): GetResult | Promise<GetResult> {
    const { backend } = this.#context;
    const read = this.#gone.signal.aborted
      ? undefined
      : this.#references
        ? backend.readNowByReference(scope, id, this.#owner)
        : backend.readNow(scope, id, this.#owner);
    if (!read) return this.#getLater(scope, id, wait, signal);
    const { lease, record } = read;
    this.#count(scope, record);
    const handle = this.#context.nextHandle();
    // The lease itself serves as the handle: its release is synchronous, and there is no closure to make.
    this.#held.set(handle, lease);
    return { handle, item: record?.file ? this.#wireItem(record) : ((record as EncodedRecord | undefined) ?? null) };
  }

  async #getLater(scope: Scope, id: string, wait: boolean, signal: RequestSignal): Promise<GetResult> {
    // By reference, as readNow reads: the file of a value kept in one is not read into the daemon's memory.
    const reference = this.#references;
    const options = wait ? { signal: this.#gate(signal), owner: this.#owner, reference } : { wait: false, owner: this.#owner, reference };
    const got = await this.#context.backend.get(scope, id, options);
    if (!got) return { handle: null, item: null };
    this.#count(scope, got.item);
    const item = this.#wireItem(await recordOf(got.item));
    return { handle: await this.#keep(got), item };
  }

  async #getset(scope: Scope, id: string, wait: boolean, signal: WaitGate): Promise<GetSetResult> {
    const gs = await this.#context.backend.getset(scope, id, { wait, signal, owner: this.#owner, reference: this.#references });
    if (!gs.set) return { handle: null, item: null, stale: null };
    this.#count(scope, gs.item);
    const item = this.#wireItem(await recordOf(gs.item));
    const stale = this.#wireItem(await recordOf(gs.stale));
    this.#getsets.add(gs);
    return { handle: await this.#keep(gs), item, stale };
  }

  async #handleSet({ handle, value, ttlMs, staleMs }: HandleSetParams): Promise<void> {
    const entry = this.#held.get(handle);
    if (!entry || !this.#getsets.has(entry)) {
      throw new CacheError('CACHE_LOCK_NOT_HELD', `Handle ${handle} holds no getset lock on this connection.`);
    }
    await (entry as GetSetHandle<EncodedValue>).set(value, expiryOf(ttlMs, staleMs));
  }

  async #list({ scope, cursor, limit }: ListParams): Promise<ListPage> {
    let listing;
    try {
      listing = await this.#context.backend.list(scopeOf(scope), { ...(cursor === undefined ? {} : { cursor }), limit: limit ?? DEFAULT_LIST_LIMIT });
    } catch (error) {
      // A cursor of another scope, or not one at all.
      if (error instanceof TypeError) throw invalidParams(error.message.replace(/\.$/, ''));
      throw error;
    }
    return listPage(listing);
  }

  /** Releases a handle; an unknown one (released already, or another connection's) is ignored. */
  release(handle: number): void {
    const entry = this.#held.get(handle);
    if (!entry) return;
    this.#held.delete(handle);
    void entry.release();
  }

  async #set({ scope, id, value, modified, ttlMs, staleMs }: SetParams, signal: WaitGate): Promise<void> {
    const when = modified ?? Date.now() / 1000;
    if (!Number.isFinite(when)) throw invalidParams('modified must be a finite number');
    await this.#context.backend.set(this.#scopeOf(scope), id, value, { modified: when, signal, owner: this.#owner, ...expiryOf(ttlMs, staleMs) });
  }

  /** Asks the daemon to stop once the answer to this request is on its way. */
  #shutdown(): void {
    this.#context.log(`shutdown requested by ${this.#clientName}`);
    setImmediate(() => this.#context.requestStop(`shutdown requested by ${this.#clientName}`));
  }

  /** Ends the session: aborts its waits and releases its locks; resolves once they are released. */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      this.#gone.abort(new CacheError('CACHE_CONNECTION_LOST', 'The connection closed.'));
      // Newest first: a request only ever waits behind earlier ones, so ending the newest never grants another
      // of this session's (oldest first, ending a queued clear could grant this session's set queued behind it).
      // Each wait ends directly, not through an abort signal, which costs an event apiece.
      for (const cancel of [...this.#waiting].reverse()) cancel(this.#gone.signal.reason);
      const handles = [...this.#held.values()];
      this.#held.clear();
      await Promise.allSettled(handles.map(async (entry) => entry.release()));
      this.#logLimit.flush();
      this.#markClosed();
    })();
    return this.#closing;
  }
}

/**
 * The stored record behind a handle's item (a {@link ReferenceRecord} for a value read by reference): the daemon's
 * values are the stored bytes, so decoding returns them.
 */
async function recordOf(item: CacheItem<EncodedValue> | null): Promise<EncodedRecord | ReferenceRecord | null> {
  if (!item) return null;
  const stored = storedRecordOf<EncodedValue>(item);
  if (stored) return stored;
  const value = await item.value();
  // `expires` is `expiresAtMs / 1000`, which `* 1000` gives back exactly.
  return item.expires === undefined || item.expires === null ? { modified: item.modified, value } : { modified: item.modified, value, expiresAtMs: item.expires * 1000 };
}

function sameNames(a: readonly string[], b: readonly string[]): boolean {
  if (a.length !== b.length) return false;
  for (let n = 0; n < a.length; n++) if (a[n] !== b[n]) return false;
  return true;
}

/** The expiry options of a write, only those given (the backend tells absent from `undefined` as the public API does). */
function expiryOf(ttlMs: number | undefined, staleMs: number | undefined): { ttlMs?: number; staleMs?: number } | undefined {
  if (ttlMs === undefined) return undefined;
  return staleMs === undefined ? { ttlMs } : { ttlMs, staleMs };
}

