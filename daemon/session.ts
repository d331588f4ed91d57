import type { CacheItem, GetSetHandle } from '../src/cache.js';
import { CacheError, isCacheError } from '../src/errors.js';
import type { EncodedValue } from '../src/store.js';
import type { LocalBackend } from '../src/local-backend.js';
import type { SignalSource } from '../src/lock-table.js';
import { type InitializeResult, PROTOCOL_VERSION, type StatusResult, type WireErrorCode } from '../src/protocol.js';
import { type Scope, scopeOf } from '../src/scope-path.js';

/** What every connection of one daemon shares. */
export interface DaemonContext {
  readonly backend: LocalBackend<EncodedValue, EncodedValue>;
  readonly version: string;
  readonly maxMessageBytes: number;
  readonly counters: { hits: number; misses: number };
  /** Issues a handle number never used before in this daemon, which doubles as the grant's token. */
  nextHandle(): number;
  status(): Promise<StatusResult>;
  /** Starts the daemon's one shutdown path. */
  requestStop(reason: string): void;
  log(message: string): void;
}

/** A failure to report to the client with its wire code, whatever the transport. */
export class WireError extends Error {
  constructor(
    readonly code: WireErrorCode,
    message: string,
    readonly details: Record<string, unknown> = {},
  ) {
    super(message);
  }
}

export function invalidParams(why: string): WireError {
  return new WireError('CACHE_INVALID_PARAMS', `Invalid params: ${why}.`);
}

/** The reason a wait ends when its request is cancelled. */
export const CANCELLED = Symbol('cancelled');

/** An item as it travels: the stored bytes, not decoded. */
export interface WireValueItem {
  modified: number;
  encoding: string;
  bytes: Uint8Array;
}

type Held =
  | { kind: 'get'; handle: { release(): void | Promise<void> } }
  | { kind: 'getset'; handle: GetSetHandle<EncodedValue> };

const ENCODING_NAME = /^[\x21-\x7e]{1,64}$/;

/** Checks a scope path from either transport: an array of non-empty strings. */
export function checkScope(scope: unknown): Scope {
  if (!Array.isArray(scope)) throw invalidParams('scope must be an array of non-empty strings');
  for (const name of scope) {
    if (typeof name !== 'string' || name === '') throw invalidParams('scope must be an array of non-empty strings');
  }
  return scopeOf(scope as string[]);
}

/** Refuses an encoding name that is not 1 to 64 printable ASCII characters. */
export function checkEncodingName(encoding: string): void {
  if (!ENCODING_NAME.test(encoding)) throw invalidParams('encoding must be 1 to 64 printable ASCII characters');
}

async function itemBytes(item: CacheItem<EncodedValue> | null): Promise<WireValueItem | null> {
  if (!item) return null;
  const { encoding, bytes } = await item.value();
  return { modified: item.modified, encoding, bytes };
}

/**
 * One client's session, whatever its transport: the handshake, the handles it holds and the calls it makes.
 * Every lock belongs to the session; when it closes, its waits are dropped and its locks released at once.
 * Arguments arrive decoded and checked for type; the transports turn results and errors into messages.
 */
export class Session {
  readonly #context: DaemonContext;
  readonly #held = new Map<number, Held>();
  readonly #gone = new AbortController();
  readonly #label: string;
  #clientName: string;
  #initialized = false;
  #closing: Promise<void> | undefined;
  /** Wait signals made by {@link Session.waitController}, ended before any lock of the session is released. */
  readonly #waits = new Set<AbortController>();
  #markClosed!: () => void;
  /** Resolves once the session has ended and its locks are released. */
  readonly closed = new Promise<void>((resolve) => (this.#markClosed = resolve));

  constructor(context: DaemonContext, label: string) {
    this.#context = context;
    this.#label = label;
    this.#clientName = label;
  }

  get initialized(): boolean {
    return this.#initialized;
  }

  /** Checks the handshake and, when it succeeds, lets the other calls through. */
  initialize(params: { protocolVersion: unknown; clientName?: unknown }, transport: 'json' | 'binary'): InitializeResult {
    const { version, maxMessageBytes } = this.#context;
    if (typeof params.protocolVersion !== 'number') throw invalidParams('protocolVersion must be a number');
    if (params.protocolVersion !== PROTOCOL_VERSION) {
      throw new WireError(
        'CACHE_PROTOCOL_MISMATCH',
        `The running hoard daemon (version ${version}) speaks protocol ${PROTOCOL_VERSION}, but this client ` +
          `speaks protocol ${params.protocolVersion}. Run \`hoard stop\` to stop the old daemon; the next connect starts ` +
          'one of the client\u2019s version, and the data is kept.',
        { daemonVersion: version, daemonProtocolVersion: PROTOCOL_VERSION, clientProtocolVersion: params.protocolVersion },
      );
    }
    if (typeof params.clientName === 'string') this.#clientName = `${params.clientName} (${this.#label})`;
    this.#initialized = true;
    return {
      daemonVersion: version,
      protocolVersion: PROTOCOL_VERSION,
      pid: process.pid,
      capabilities: { valueTransfer: 'base64', transport, maxMessageBytes },
    };
  }

  /**
   * A controller for one request's wait that ends with the session: call `done` once the request is over. When
   * the session closes, every wait ends before any of its locks is released, so that none is granted to it.
   */
  waitController(): { controller: AbortController; done(): void } {
    const controller = new AbortController();
    if (this.#gone.signal.aborted) controller.abort(this.#gone.signal.reason);
    else this.#waits.add(controller);
    return { controller, done: () => void this.#waits.delete(controller) };
  }

  /** Logs a line about this session's client. */
  log(message: string): void {
    this.#context.log(`${this.#clientName}: ${message}`);
  }

  /** Turns any failure into the error the client receives, logging the unexpected ones. */
  toWireError(error: unknown): WireError {
    if (error instanceof WireError) return error;
    if (error === CANCELLED) return new WireError('CACHE_CANCELLED', 'The request was cancelled.');
    if (isCacheError(error)) return new WireError(error.code, error.message);
    this.#context.log(`internal error serving ${this.#clientName}: ${error instanceof Error ? error.stack : String(error)}`);
    return new WireError('CACHE_INTERNAL', 'The daemon failed unexpectedly; its log has the details.');
  }

  /** Keeps a granted handle, unless the session ended while it was being granted. */
  async #keep(entry: Held): Promise<number> {
    if (this.#gone.signal.aborted) {
      await entry.handle.release();
      throw new CacheError('CACHE_CONNECTION_LOST', 'The connection closed.');
    }
    const number = this.#context.nextHandle();
    this.#held.set(number, entry);
    return number;
  }

  #count(item: unknown): void {
    if (item) this.#context.counters.hits++;
    else this.#context.counters.misses++;
  }

  /** Reads at once when the item's shared lock is free; `undefined` when the read must wait (use {@link Session.get}). */
  getNow(scope: Scope, id: string): { handle: number; item: WireValueItem | null } | undefined {
    if (this.#gone.signal.aborted) return undefined;
    const read = this.#context.backend.readNow(scope, id);
    if (!read) return undefined;
    const { lease, record } = read;
    this.#count(record);
    const handle = this.#context.nextHandle();
    // The lease itself serves as the handle: its release is synchronous, and there is no closure to make.
    this.#held.set(handle, { kind: 'get', handle: lease });
    return { handle, item: record ? { modified: record.modified, encoding: record.value.encoding, bytes: record.value.bytes } : null };
  }

  async get(scope: Scope, id: string, signal: SignalSource): Promise<{ handle: number; item: WireValueItem | null }> {
    const got = await this.#context.backend.get(scope, id, signal);
    this.#count(got.item);
    const item = await itemBytes(got.item);
    return { handle: await this.#keep({ kind: 'get', handle: got }), item };
  }

  async getset(scope: Scope, id: string, wait: boolean, signal: SignalSource): Promise<{ handle: number | null; item: WireValueItem | null }> {
    const gs = await this.#context.backend.getset(scope, id, { wait, signal });
    if (!gs.set) return { handle: null, item: null };
    this.#count(gs.item);
    const item = await itemBytes(gs.item);
    return { handle: await this.#keep({ kind: 'getset', handle: gs }), item };
  }

  async handleSet(handle: number, value: EncodedValue): Promise<void> {
    const entry = this.#held.get(handle);
    if (entry?.kind !== 'getset') {
      throw new CacheError('CACHE_LOCK_NOT_HELD', `Handle ${handle} holds no getset lock on this connection.`);
    }
    await entry.handle.set(value);
  }

  /** Releases a handle; an unknown one (released already, or another connection's) is ignored. */
  release(handle: number): void {
    const entry = this.#held.get(handle);
    if (!entry) return;
    this.#held.delete(handle);
    void entry.handle.release();
  }

  async set(scope: Scope, id: string, value: EncodedValue, modified: number | undefined, signal: SignalSource): Promise<void> {
    const when = modified ?? Date.now() / 1000;
    if (!Number.isFinite(when)) throw invalidParams('modified must be a finite number');
    await this.#context.backend.set(scope, id, value, when, signal);
  }

  async delete(scope: Scope, id: string, signal: SignalSource): Promise<void> {
    await this.#context.backend.delete(scope, id, signal);
  }

  async clear(scope: Scope, signal: SignalSource): Promise<void> {
    await this.#context.backend.clear(scope, signal);
  }

  status(): Promise<StatusResult> {
    return this.#context.status();
  }

  /** Asks the daemon to stop once the answer to this request is on its way. */
  shutdown(): void {
    this.#context.log(`shutdown requested by ${this.#clientName}`);
    setImmediate(() => this.#context.requestStop(`shutdown requested by ${this.#clientName}`));
  }

  /** Ends the session: aborts its waits and releases its locks; resolves once they are released. */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      this.#gone.abort(new CacheError('CACHE_CONNECTION_LOST', 'The connection closed.'));
      // Newest first: a request only ever waits behind earlier ones, so ending the newest never grants another
      // of this session's (oldest first, ending a queued clear could grant this session's set queued behind it).
      for (const controller of [...this.#waits].reverse()) controller.abort(this.#gone.signal.reason);
      this.#waits.clear();
      const handles = [...this.#held.values()];
      this.#held.clear();
      await Promise.allSettled(handles.map(async (entry) => entry.handle.release()));
      this.#markClosed();
    })();
    return this.#closing;
  }
}
