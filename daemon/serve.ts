import { setMaxListeners } from 'node:events';
import type { CancellationToken, MessageConnection } from 'vscode-jsonrpc';
import { ResponseError } from 'vscode-jsonrpc';
import type { CacheItem, GetHandle, GetSetHandle } from '../src/cache.js';
import { CacheError, type CacheErrorCode, isCacheError } from '../src/errors.js';
import type { EncodedValue } from '../src/level-store.js';
import type { LocalBackend } from '../src/local-backend.js';
import {
  Clear,
  Delete,
  ERROR_NUMBERS,
  Exit,
  Get,
  GetSet,
  HandleSet,
  Initialize,
  type InitializeResult,
  PROTOCOL_VERSION,
  Release,
  Set as SetRequest,
  Shutdown,
  Status,
  type StatusResult,
  type WireErrorCode,
  type WireItem,
} from '../src/protocol.js';
import { scopeOf, type Scope } from '../src/scope-path.js';

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

type Held = { kind: 'get'; handle: GetHandle<EncodedValue> } | { kind: 'getset'; handle: GetSetHandle<EncodedValue> };

const ENCODING_NAME = /^[\x21-\x7e]{1,64}$/;
/** Base64 with padding; a flat character class, since grouped repetition overflows the regex stack on large values. */
const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;

class InvalidParams extends Error {}

function wireError(code: WireErrorCode, message: string, details: Record<string, unknown> = {}): ResponseError<unknown> {
  return new ResponseError(ERROR_NUMBERS[code], message, { code, ...details });
}

function params(value: unknown): Record<string, unknown> {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new InvalidParams('params must be an object');
  return value as Record<string, unknown>;
}

function str(p: Record<string, unknown>, name: string): string {
  if (typeof p[name] !== 'string') throw new InvalidParams(`${name} must be a string`);
  return p[name] as string;
}

function scopeParam(p: Record<string, unknown>): Scope {
  const scope = p.scope;
  if (!Array.isArray(scope) || !scope.every((name) => typeof name === 'string' && name !== '')) {
    throw new InvalidParams('scope must be an array of non-empty strings');
  }
  return scopeOf(scope as string[]);
}

function handleParam(p: Record<string, unknown>): number {
  if (!Number.isSafeInteger(p.handle) || (p.handle as number) < 0) throw new InvalidParams('handle must be a non-negative integer');
  return p.handle as number;
}

function valueParam(p: Record<string, unknown>): EncodedValue {
  const encoding = str(p, 'encoding');
  if (!ENCODING_NAME.test(encoding)) throw new InvalidParams('encoding must be 1 to 64 printable ASCII characters');
  const value = str(p, 'value');
  if (value.length % 4 !== 0 || !BASE64.test(value)) {
    throw new CacheError('CACHE_INVALID_VALUE', 'value must be base64 (RFC 4648, with padding)');
  }
  return { encoding, bytes: Buffer.from(value, 'base64') };
}

async function toWire(item: CacheItem<EncodedValue> | null): Promise<WireItem | null> {
  if (!item) return null;
  const { encoding, bytes } = await item.value();
  return { modified: item.modified, encoding, value: Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('base64') };
}

/** The reason a wait ends when its request is cancelled with `$/cancelRequest`. */
const CANCELLED = Symbol('cancelled');

/**
 * Serves one connection: protocol in, lock table and store out. Every lock belongs to the connection; when it
 * closes, its waits are dropped and its locks released at once.
 */
export function serveConnection(
  connection: MessageConnection,
  context: DaemonContext,
  options: { label: string; destroyTransport: () => void },
): { closed: Promise<void> } {
  const { label } = options;
  const { backend } = context;
  const held = new Map<number, Held>();
  const gone = new AbortController();
  // Every request in flight listens for the connection going away.
  setMaxListeners(0, gone.signal);
  let initialized = false;
  let clientName = label;

  /** A signal that aborts when the request is cancelled or the connection closes. */
  function requestSignal(token: CancellationToken): { signal: AbortSignal; done(): void } {
    const controller = new AbortController();
    const onGone = (): void => controller.abort(gone.signal.reason);
    if (gone.signal.aborted) onGone();
    else gone.signal.addEventListener('abort', onGone, { once: true });
    if (token.isCancellationRequested) controller.abort(CANCELLED);
    const subscription = token.onCancellationRequested(() => controller.abort(CANCELLED));
    return {
      signal: controller.signal,
      done: () => {
        gone.signal.removeEventListener('abort', onGone);
        subscription.dispose();
      },
    };
  }

  function toResponse(error: unknown): ResponseError<unknown> {
    if (error instanceof ResponseError) return error;
    if (error === CANCELLED) return wireError('CACHE_CANCELLED', 'The request was cancelled.');
    if (error instanceof InvalidParams) return wireError('CACHE_INVALID_PARAMS', `Invalid params: ${error.message}.`);
    if (isCacheError(error)) return wireError(error.code, error.message);
    context.log(`internal error serving ${clientName}: ${error instanceof Error ? error.stack : String(error)}`);
    return wireError('CACHE_INTERNAL', 'The daemon failed unexpectedly; its log has the details.');
  }

  /** Registers a handler that runs only after `initialize`, with errors turned into coded responses. */
  function handle(method: string, run: (p: Record<string, unknown>, signal: AbortSignal) => Promise<unknown>): void {
    // vscode-jsonrpc passes the params (when the request has any), then the cancellation token.
    connection.onRequest(method, async (...args: unknown[]) => {
      const token = args.at(-1) as CancellationToken;
      const raw = args.length > 1 ? args[0] : undefined;
      if (!initialized) {
        return wireError('CACHE_NOT_INITIALIZED', `Send initialize before ${method}.`);
      }
      const { signal, done } = requestSignal(token);
      try {
        return await run(raw === undefined || raw === null ? {} : params(raw), signal);
      } catch (error) {
        return toResponse(error);
      } finally {
        done();
      }
    });
  }

  /** Keeps a granted handle, unless the connection closed while it was being granted. */
  async function keep(entry: Held): Promise<number> {
    if (gone.signal.aborted) {
      await entry.handle.release();
      throw new CacheError('CACHE_CONNECTION_LOST', 'The connection closed.');
    }
    const number = context.nextHandle();
    held.set(number, entry);
    return number;
  }

  function count(item: unknown): void {
    if (item) context.counters.hits++;
    else context.counters.misses++;
  }

  connection.onRequest(Initialize.method, (raw: unknown): InitializeResult | ResponseError<unknown> => {
    try {
      const p = params(raw);
      if (typeof p.protocolVersion !== 'number') throw new InvalidParams('protocolVersion must be a number');
      if (p.protocolVersion !== PROTOCOL_VERSION) {
        return wireError(
          'CACHE_PROTOCOL_MISMATCH',
          `The running hoard daemon (version ${context.version}) speaks protocol ${PROTOCOL_VERSION}, but this client ` +
            `speaks protocol ${p.protocolVersion}. Run \`hoard stop\` to stop the old daemon; the next connect starts ` +
            'one of the client\u2019s version, and the data is kept.',
          { daemonVersion: context.version, daemonProtocolVersion: PROTOCOL_VERSION, clientProtocolVersion: p.protocolVersion },
        );
      }
      if (typeof p.clientName === 'string') clientName = `${p.clientName} (${label})`;
      initialized = true;
      return {
        daemonVersion: context.version,
        protocolVersion: PROTOCOL_VERSION,
        pid: process.pid,
        capabilities: { valueTransfer: 'base64', maxMessageBytes: context.maxMessageBytes },
      };
    } catch (error) {
      return toResponse(error);
    }
  });

  handle(Get.method, async (p, signal) => {
    const got = await backend.get(scopeParam(p), str(p, 'id'), signal);
    count(got.item);
    const item = await toWire(got.item);
    return { handle: await keep({ kind: 'get', handle: got }), item };
  });

  handle(GetSet.method, async (p, signal) => {
    if (p.wait !== undefined && typeof p.wait !== 'boolean') throw new InvalidParams('wait must be a boolean');
    const gs = await backend.getset(scopeParam(p), str(p, 'id'), { wait: p.wait !== false, signal });
    if (!gs.set) return { handle: null, item: null };
    count(gs.item);
    const item = await toWire(gs.item);
    return { handle: await keep({ kind: 'getset', handle: gs }), item };
  });

  handle(HandleSet.method, async (p) => {
    const number = handleParam(p);
    const value = valueParam(p);
    const entry = held.get(number);
    if (entry?.kind !== 'getset') {
      throw new CacheError('CACHE_LOCK_NOT_HELD', `Handle ${number} holds no getset lock on this connection.`);
    }
    await entry.handle.set(value);
    return null;
  });

  connection.onNotification(Release.method, (raw: unknown) => {
    if (!initialized) return;
    try {
      const number = handleParam(params(raw));
      const entry = held.get(number);
      held.delete(number);
      void entry?.handle.release();
    } catch (error) {
      context.log(`ignoring a cache/release from ${clientName}: ${error instanceof Error ? error.message : String(error)}`);
    }
  });

  handle(SetRequest.method, async (p, signal) => {
    const scope = scopeParam(p);
    const id = str(p, 'id');
    const value = valueParam(p);
    const modified = p.modified === undefined ? Date.now() / 1000 : p.modified;
    if (typeof modified !== 'number' || !Number.isFinite(modified)) throw new InvalidParams('modified must be a finite number');
    await backend.set(scope, id, value, modified, signal);
    return null;
  });

  handle(Delete.method, async (p, signal) => {
    await backend.delete(scopeParam(p), str(p, 'id'), signal);
    return null;
  });

  handle(Clear.method, async (p, signal) => {
    await backend.clear(scopeParam(p), signal);
    return null;
  });

  handle(Status.method, async () => context.status());

  connection.onRequest(Shutdown.method, () => {
    context.log(`shutdown requested by ${clientName}`);
    // Answer first; the stop closes this connection with the others.
    setImmediate(() => context.requestStop(`shutdown requested by ${clientName}`));
    return null;
  });
  connection.onNotification(Exit.method, () => options.destroyTransport());

  const closed = new Promise<void>((resolve) => {
    connection.onClose(async () => {
      gone.abort(new CacheError('CACHE_CONNECTION_LOST' satisfies CacheErrorCode, 'The connection closed.'));
      const handles = [...held.values()];
      held.clear();
      await Promise.allSettled(handles.map((entry) => entry.handle.release()));
      connection.dispose();
      resolve();
    });
  });
  connection.listen();
  return { closed };
}
