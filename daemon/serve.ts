import type { CancellationToken, MessageConnection } from 'vscode-jsonrpc';
import { ResponseError } from 'vscode-jsonrpc';
import type { EncodedValue } from '../src/store.js';
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
  Release,
  Set as SetRequest,
  Shutdown,
  Status,
  type WireItem,
} from '../src/protocol.js';
import { CANCELLED, checkEncodingName, checkScope, invalidParams, type Session, type WireValueItem, WireError } from './session.js';

/** Base64 with padding; a flat character class, since grouped repetition overflows the regex stack on large values. */
const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;

function params(value: unknown): Record<string, unknown> {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw invalidParams('params must be an object');
  return value as Record<string, unknown>;
}

function str(p: Record<string, unknown>, name: string): string {
  if (typeof p[name] !== 'string') throw invalidParams(`${name} must be a string`);
  return p[name] as string;
}

function handleParam(p: Record<string, unknown>): number {
  if (!Number.isSafeInteger(p.handle) || (p.handle as number) < 0) throw invalidParams('handle must be a non-negative integer');
  return p.handle as number;
}

function valueParam(p: Record<string, unknown>): EncodedValue {
  const encoding = str(p, 'encoding');
  checkEncodingName(encoding);
  const value = str(p, 'value');
  if (value.length % 4 !== 0 || !BASE64.test(value)) {
    throw new WireError('CACHE_INVALID_VALUE', 'value must be base64 (RFC 4648, with padding)');
  }
  return { encoding, bytes: Buffer.from(value, 'base64') };
}

function toWire(item: WireValueItem | null): WireItem | null {
  if (!item) return null;
  const { modified, encoding, bytes } = item;
  return { modified, encoding, value: Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('base64') };
}

function toResponse(session: Session, error: unknown): ResponseError<unknown> {
  const wire = session.toWireError(error);
  return new ResponseError(ERROR_NUMBERS[wire.code], wire.message, { code: wire.code, ...wire.details });
}

/**
 * The answer to an `initialize` that asks for the binary transport and succeeds, as the one JSON message to
 * send before switching; `undefined` for any other message, which the JSON transport then handles.
 */
export function binaryUpgrade(session: Session, message: unknown): { jsonrpc: '2.0'; id: number | string; result: InitializeResult } | undefined {
  const { method, id, params: raw } = message as { method?: unknown; id?: unknown; params?: unknown };
  if (method !== Initialize.method || (typeof id !== 'number' && typeof id !== 'string')) return undefined;
  const transports = (raw as { transports?: unknown } | undefined)?.transports;
  if (!Array.isArray(transports) || !transports.includes('binary')) return undefined;
  try {
    return { jsonrpc: '2.0', id, result: session.initialize(raw as { protocolVersion: unknown }, 'binary') };
  } catch {
    return undefined;
  }
}

/**
 * Serves one session over a JSON-RPC connection: JSON params in, session calls out. When the connection closes,
 * the session ends, which releases its locks.
 */
export function serveJson(connection: MessageConnection, session: Session, options: { destroyTransport: () => void }): void {
  /** A signal that aborts when the request is cancelled or the session ends. */
  function requestSignal(token: CancellationToken): { signal: AbortSignal; done(): void } {
    const wait = session.waitController();
    const { controller } = wait;
    if (token.isCancellationRequested) controller.abort(CANCELLED);
    const subscription = token.onCancellationRequested(() => controller.abort(CANCELLED));
    return {
      signal: controller.signal,
      done: () => {
        wait.done();
        subscription.dispose();
      },
    };
  }

  /** Registers a handler that runs only after `initialize`, with errors turned into coded responses. */
  function handle(method: string, run: (p: Record<string, unknown>, signal: AbortSignal) => Promise<unknown>): void {
    // vscode-jsonrpc passes the params (when the request has any), then the cancellation token.
    connection.onRequest(method, async (...args: unknown[]) => {
      const token = args.at(-1) as CancellationToken;
      const raw = args.length > 1 ? args[0] : undefined;
      if (!session.initialized) {
        return toResponse(session, new WireError('CACHE_NOT_INITIALIZED', `Send initialize before ${method}.`));
      }
      const { signal, done } = requestSignal(token);
      try {
        return await run(raw === undefined || raw === null ? {} : params(raw), signal);
      } catch (error) {
        return toResponse(session, error);
      } finally {
        done();
      }
    });
  }

  connection.onRequest(Initialize.method, (raw: unknown): InitializeResult | ResponseError<unknown> => {
    try {
      return session.initialize(params(raw) as { protocolVersion: unknown }, 'json');
    } catch (error) {
      return toResponse(session, error);
    }
  });

  handle(Get.method, async (p, signal) => {
    const { handle, item } = await session.get(checkScope(p.scope), str(p, 'id'), signal);
    return { handle, item: toWire(item) };
  });

  handle(GetSet.method, async (p, signal) => {
    if (p.wait !== undefined && typeof p.wait !== 'boolean') throw invalidParams('wait must be a boolean');
    const { handle, item } = await session.getset(checkScope(p.scope), str(p, 'id'), p.wait !== false, signal);
    return { handle, item: toWire(item) };
  });

  handle(HandleSet.method, async (p) => {
    const handle = handleParam(p);
    await session.handleSet(handle, valueParam(p));
    return null;
  });

  connection.onNotification(Release.method, (raw: unknown) => {
    if (!session.initialized) return;
    try {
      session.release(handleParam(params(raw)));
    } catch (error) {
      session.log(`ignoring a cache/release: ${error instanceof Error ? error.message : String(error)}`);
    }
  });

  handle(SetRequest.method, async (p, signal) => {
    const scope = checkScope(p.scope);
    const id = str(p, 'id');
    const value = valueParam(p);
    if (p.modified !== undefined && typeof p.modified !== 'number') throw invalidParams('modified must be a finite number');
    await session.set(scope, id, value, p.modified, signal);
    return null;
  });

  handle(Delete.method, async (p, signal) => {
    await session.delete(checkScope(p.scope), str(p, 'id'), signal);
    return null;
  });

  handle(Clear.method, async (p, signal) => {
    await session.clear(checkScope(p.scope), signal);
    return null;
  });

  handle(Status.method, async () => session.status());

  connection.onRequest(Shutdown.method, () => {
    // Answer first; the stop closes this connection with the others.
    session.shutdown();
    return null;
  });
  connection.onNotification(Exit.method, () => options.destroyTransport());

  connection.onClose(async () => {
    await session.close();
    connection.dispose();
  });
  connection.listen();
}
