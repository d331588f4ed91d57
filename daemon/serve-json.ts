import { type CancellationToken, type MessageConnection, ResponseError } from 'vscode-jsonrpc';
import { type AnyRequest, Exit, Initialize, type InitializeResult, Release, REQUESTS } from '../src/wire/protocol.js';
import { ERROR_NUMBERS } from '../src/wire/wire-error.js';
import { CANCELLED, type Session } from './session.js';

function toResponse(session: Session, error: unknown): ResponseError<unknown> {
  const wire = session.toWireError(error);
  return new ResponseError(ERROR_NUMBERS[wire.code], wire.message, { code: wire.code, ...wire.details });
}

/**
 * Serves one session over a JSON-RPC connection: params in through each method's layout, session calls out.
 * When the connection closes, the session ends, which releases its locks.
 */
export function serveJson(connection: MessageConnection, session: Session, options: { destroyTransport: () => void }): void {
  function serve(method: AnyRequest): void {
    // Registered by name: vscode-jsonrpc then passes the params when the request has any, and the token last.
    connection.onRequest(method.method, async (...args: unknown[]) => {
      const token = args.at(-1) as CancellationToken;
      const raw = args.length > 1 ? args[0] : undefined;
      const wait = session.waitController();
      const subscription = token.onCancellationRequested(() => wait.controller.abort(CANCELLED));
      if (token.isCancellationRequested) wait.controller.abort(CANCELLED);
      try {
        const handler = session.handler(method);
        const params = method.params.fromJson(raw ?? {});
        return method.result.toJson(await handler(params, wait.controller.signal));
      } catch (error) {
        return toResponse(session, error);
      } finally {
        wait.done();
        subscription.dispose();
      }
    });
  }
  for (const method of REQUESTS) serve(method);

  connection.onRequest(Initialize.method, (raw: unknown): InitializeResult | ResponseError<unknown> => {
    try {
      return session.initialize(Initialize.fromJson(raw), 'json');
    } catch (error) {
      return toResponse(session, error);
    }
  });

  connection.onNotification(Release.method, (raw: unknown) => {
    // Before initialize, a release has nothing to release.
    if (!session.initialized) return;
    try {
      session.release(Release.params.fromJson(raw).handle);
    } catch (error) {
      session.log(`ignoring a cache/release: ${error instanceof Error ? error.message : String(error)}`);
    }
  });
  connection.onNotification(Exit.method, () => options.destroyTransport());

  connection.onClose(async () => {
    await session.close();
    connection.dispose();
  });
  connection.listen();
}
