import { CacheError } from '../src/errors.js';
import type { EncodedValue } from '../src/store.js';
import type { AnyRequest, InitializeResult, NotificationMethod, RequestMethod } from '../src/wire/protocol.js';

export interface CallOptions<R> {
  /** Aborting rejects the call at once with the signal's reason and cancels the request at the daemon. */
  signal?: AbortSignal | undefined;
  /** Receives a result that arrives after the call was aborted, so that a lock granted meanwhile can be released. */
  abandoned?: ((result: R) => void) | undefined;
}

/** How a connection's byte stream is ended: gently first, then for good. */
export interface Transport {
  end(): void;
  destroy(): void;
  /** Resolves once whatever is behind the transport (a child process) is gone. */
  gone?: Promise<void>;
}

export function lostError(): CacheError {
  return new CacheError('CACHE_CONNECTION_LOST', 'The connection to the hoard daemon closed; the next call reconnects.');
}

export function closedError(): CacheError {
  return new CacheError('CACHE_CLOSED', 'The cache is closed.');
}

/** Whether connecting failed because no daemon listens, or one that was stopping hung up on us. */
export function isNoDaemon(error: unknown): boolean {
  const code = (error as { code?: unknown })?.code;
  return code === 'ENOENT' || code === 'ECONNREFUSED' || code === 'ECONNRESET' || code === 'EPIPE' || code === 'CACHE_CONNECTION_LOST';
}

/** How long closing waits for the daemon to close its side before cutting the connection. */
const CLOSE_GRACE_MS = 1000;

interface Pending {
  method: AnyRequest;
  resolve(result: unknown): void;
  reject(error: unknown): void;
  /** Set when the caller gave up waiting: a late result goes here. */
  abandoned?: ((result: never) => void) | undefined;
}

const nothing = (): undefined => undefined;

/**
 * One connection to the daemon after the handshake: the call bookkeeping that both framings share (request ids,
 * answers, abort and cancel, results that arrive after an abort, loss and close). A subclass writes and reads
 * one framing, and reports each answer through {@link Channel.answered} or {@link Channel.failed}.
 */
export abstract class Channel {
  /** What the daemon said of itself in the handshake. */
  readonly info: InitializeResult;
  /** Resolves once the connection has closed, for whatever reason. */
  readonly lostPromise: Promise<void>;
  protected readonly transport: Transport;
  readonly #pending = new Map<number, Pending>();
  #nextId = 0;
  #lost = false;
  #closedByUs = false;
  #markLost!: () => void;

  protected constructor(transport: Transport, info: InitializeResult) {
    this.transport = transport;
    this.info = info;
    this.lostPromise = new Promise((resolve) => (this.#markLost = resolve));
  }

  /** Whether the connection has closed. */
  get lost(): boolean {
    return this.#lost;
  }

  /** Writes one request in this framing. */
  protected abstract send(id: number, method: AnyRequest, params: unknown): void;
  protected abstract sendNotification(method: NotificationMethod<unknown>, params: unknown): void;
  protected abstract sendCancel(id: number): void;
  /** The size of the message that carries `value` with these params: exact, or a little over. */
  protected abstract messageBytes(value: EncodedValue, params: unknown): number;
  /** Hands over what is queued before the transport ends. */
  protected flush(): void {}

  #error(): CacheError {
    return this.#closedByUs ? closedError() : lostError();
  }

  /**
   * Sends one request and resolves to its result.
   * @throws CacheError `CACHE_VALUE_TOO_LARGE` before sending a value larger than the daemon accepts,
   * `CACHE_CONNECTION_LOST` or `CACHE_CLOSED` when the connection ends first, or the daemon's coded error.
   */
  request<P, R>(method: RequestMethod<P, R>, params: P, options?: CallOptions<R>): Promise<R> {
    let resolve!: (result: R) => void;
    let reject!: (error: unknown) => void;
    const result = new Promise<R>((settle, fail) => {
      resolve = settle;
      reject = fail;
    });
    // Outside the executor, so that a request that cannot be written throws at once, as it always has.
    this.call(method, params, options, resolve, reject);
    return result;
  }

  /**
   * Sends one request as {@link Channel.request} does, but settles through `resolve` and `reject` (which must not
   * throw) instead of a promise of its own: a caller that has its own promise saves a promise and its hops per call.
   * A request that cannot be written throws at once.
   */
  call<P, R>(method: RequestMethod<P, R>, params: P, options: CallOptions<R> | undefined, resolve: (result: R) => void, reject: (error: unknown) => void): void {
    const signal = options?.signal;
    if (signal?.aborted) return reject(signal.reason);
    if (this.#lost) return reject(this.#error());
    if (method.value) {
      const value = method.value(params);
      const bytes = this.messageBytes(value, params);
      const limit = this.info.capabilities.maxMessageBytes;
      if (bytes > limit) {
        const size = value.bytes.byteLength;
        return reject(new CacheError('CACHE_VALUE_TOO_LARGE', `This value of ${size} bytes takes a message of ${bytes} bytes, and the daemon accepts messages of at most ${limit} bytes.`));
      }
    }
    const id = (this.#nextId = (this.#nextId + 1) >>> 0 || 1);
    this.send(id, method, params);
    const pending: Pending = { method, resolve: resolve as (result: unknown) => void, reject, abandoned: undefined };
    this.#pending.set(id, pending);
    if (!signal) return;
    const onAbort = (): void => {
      pending.abandoned = options?.abandoned ?? nothing;
      pending.reject = nothing;
      if (!this.#lost) this.sendCancel(id);
      reject(signal.reason);
    };
    signal.addEventListener('abort', onAbort, { once: true });
    pending.resolve = (result) => {
      signal.removeEventListener('abort', onAbort);
      resolve(result as R);
    };
    pending.reject = (error) => {
      signal.removeEventListener('abort', onAbort);
      reject(error);
    };
  }

  /** Sends a notification; one sent over a lost connection is dropped, since the daemon released everything already. */
  notify<P>(method: NotificationMethod<P>, params: P): void {
    if (!this.#lost) this.sendNotification(method as NotificationMethod<unknown>, params);
  }

  /**
   * Settles request `id` with the result `decode` reads for its method. A result that cannot be read means the
   * stream cannot be trusted: the transport is cut, and the call fails with the others.
   */
  protected answered(id: number, decode: (method: AnyRequest) => unknown): void {
    const pending = this.#pending.get(id);
    if (!pending) return;
    let result: unknown;
    try {
      result = decode(pending.method);
    } catch {
      this.transport.destroy();
      return;
    }
    this.#pending.delete(id);
    if (pending.abandoned) pending.abandoned(result as never);
    else pending.resolve(result);
  }

  /** Fails request `id` with the error `toError` makes of the daemon's answer to its method. */
  protected failed(id: number, toError: (method: AnyRequest) => unknown): void {
    const pending = this.#pending.get(id);
    if (!pending) return;
    this.#pending.delete(id);
    pending.reject(toError(pending.method));
  }

  /** Called once the connection has closed: every pending call fails, and the transport is let go. */
  protected closed(): void {
    if (this.#lost) return;
    this.#lost = true;
    const error = this.#error();
    for (const pending of this.#pending.values()) pending.reject(error);
    this.#pending.clear();
    this.transport.destroy();
    this.#markLost();
  }

  /** Closes the connection; pending calls reject with `CACHE_CLOSED`. Cuts it if the daemon does not close its side within a second. */
  async close(): Promise<void> {
    if (!this.#lost) {
      this.#closedByUs = true;
      this.flush();
      this.transport.end();
      const cut = setTimeout(() => this.transport.destroy(), CLOSE_GRACE_MS);
      cut.unref();
      await this.lostPromise;
      clearTimeout(cut);
    }
    await this.transport.gone;
  }
}

/** The scope names and the id in `params`, if it has them. */
export function namesOf(params: unknown): string[] {
  const { scope, id } = params as { scope?: readonly string[]; id?: string };
  return id === undefined ? [...(scope ?? [])] : [...(scope ?? []), id];
}
