import { randomBytes } from 'node:crypto';
import type { Readable, Writable } from 'node:stream';
import { FramedMessageReader, type FramedMessageReaderOptions } from '../src/wire/framed-message-reader.js';
import { type AnyRequest, Exit, Initialize, isSharedItemJson, Release, REQUESTS } from '../src/wire/protocol.js';
import { ERROR_NUMBERS, WireError } from '../src/wire/wire-error.js';
import { OUTPUT_HIGH_WATER_BYTES } from './serve-binary.js';
import type { CancelWait } from '../src/lock-table.js';
import { CANCELLED, type Session } from './session.js';

/** LSP's notification that cancels a request by its id; sent as a request, it is answered too. */
const CANCEL_REQUEST = '$/cancelRequest';

/** Answers of one turn are written together, up to this many bytes: a large answer is not held back. */
const CORK_MAX_BYTES = 64 * 1024;

/**
 * A paused client is read from again once its answers waiting are down to this: the next answers are made while
 * it reads the rest, instead of after (as waiting for a full drain would have it).
 */
const RESUME_BELOW_BYTES = OUTPUT_HIGH_WATER_BYTES / 2;

/** The bytes of large base64 values still in use, by the shared item JSON (see `isSharedItemJson`) that holds them. */
const sharedBytes = new WeakMap<object, Buffer>();

/** Stands for a shared string in a serialized message; the nonce keeps any string a client chose from matching it. */
const SHARED_MARK = `"\\u0000hoard-shared-${randomBytes(16).toString('hex')}"`;

/**
 * Serializes `message` as the parts of one body: a large value that answers given together share (readers of one
 * item granted at once) goes out as one buffer written several times, not copied into each answer's text.
 */
function bodyParts(message: object): Buffer[] {
  const shared: Buffer[] = [];
  const text = JSON.stringify(message, function (this: object, key: string, value: unknown) {
    if (key !== 'value' || typeof value !== 'string' || !isSharedItemJson(this)) return value;
    let bytes = sharedBytes.get(this);
    if (!bytes) sharedBytes.set(this, (bytes = Buffer.from(JSON.stringify(value), 'latin1')));
    shared.push(bytes);
    return JSON.parse(SHARED_MARK) as string;
  });
  if (shared.length === 0) return [Buffer.from(text, 'utf8')];
  const pieces = text.split(SHARED_MARK);
  // Only if a string the client chose were the mark itself: then the plain text, copies and all.
  if (pieces.length !== shared.length + 1) return [Buffer.from(JSON.stringify(message), 'utf8')];
  const parts: Buffer[] = [];
  pieces.forEach((piece, at) => {
    parts.push(Buffer.from(piece, 'utf8'));
    if (at < shared.length) parts.push(shared[at]!);
  });
  return parts;
}

/** JSON-RPC's MethodNotFound, sent without `data`. */
const METHOD_NOT_FOUND = -32601;

const BY_METHOD = new Map<string, AnyRequest>(REQUESTS.map((method) => [method.method, method]));

type Id = number | string;

/** A message as the reader delivers it: a JSON-RPC request (with an id) or notification, already checked. */
interface Incoming {
  method: string;
  id?: Id;
  params?: unknown;
}

/** A connection served in the JSON transport. */
export interface JsonLink {
  /** Sends what is queued, then ends the output. */
  end(): void;
  /** Resolves once every answer given so far has been handed to the operating system (or the output failed). */
  drained(): Promise<void>;
}

export interface ServeJsonOptions {
  maxMessageBytes: number;
  /** Hears of input that breaks the framing: the streams cannot be trusted after it. */
  onBroken(error: Error): void;
  /** Cuts the streams at once (`exit`). */
  destroy(): void;
  /** Sees the first message, and may take the streams to another transport (see {@link FramedMessageReaderOptions}). */
  upgrade?: FramedMessageReaderOptions['upgrade'];
}

/**
 * Serves one session in the JSON transport (JSON-RPC with LSP framing, see PROTOCOL.md): each message is
 * handled as soon as it is read, in order, params in through each method's layout, session calls out.
 *
 * A request gets exactly one answer, also when another request in flight has the same id. A request method sent
 * as a notification is not carried out (nothing could hand out its result or its lock) and is logged once per
 * method; `cache/release`, `exit` and `$/cancelRequest` sent as requests are carried out and answered. When
 * more than 16 MiB of answers wait for the client to read them, no more of its messages are handled, not even
 * those already read, until it catches up.
 */
export function serveJson(input: Readable, output: Writable, session: Session, options: ServeJsonOptions): JsonLink {
  /** Requests in flight by id, for `$/cancelRequest`; a client that reuses an id in flight cancels the latest. */
  const waitingById = new Map<Id, CancelWait>();
  const loggedWithoutId = new Set<string>();
  let corked = false;
  let paused = false;
  let warnedOfBacklog = false;
  let exited = false;

  const uncork = (): void => {
    if (!corked) return;
    corked = false;
    output.uncork();
  };

  /** Writes one message; the messages of one turn go out together. */
  function send(message: object): void {
    if (output.destroyed || output.writableEnded) return;
    const parts = bodyParts(message);
    if (!corked) {
      corked = true;
      output.cork();
      process.nextTick(uncork);
    }
    output.write(`Content-Length: ${parts.reduce((total, part) => total + part.length, 0)}\r\n\r\n`, 'ascii');
    for (const [at, part] of parts.entries()) output.write(part, at === parts.length - 1 ? afterWrite : undefined);
    if (output.writableLength >= CORK_MAX_BYTES) uncork();
    if (paused || output.writableLength <= OUTPUT_HIGH_WATER_BYTES) return;
    // The client does not read its answers: handle none of its messages (even those of a chunk already read)
    // until it catches up.
    paused = true;
    reader.pause();
    session.pauseOutput(true);
    if (!warnedOfBacklog) {
      warnedOfBacklog = true;
      session.log(`does not read its answers (${Math.round(output.writableLength / 2 ** 20)} MiB wait): its messages are not read until it does`);
    }
  }

  function afterWrite(): void {
    if (!paused || output.writableLength > RESUME_BELOW_BYTES) return;
    paused = false;
    session.pauseOutput(false);
    if (!exited) reader.resume();
  }

  function result(id: Id, value: unknown): void {
    send({ jsonrpc: '2.0', id, result: value });
  }

  function fail(id: Id, error: unknown): void {
    const wire = session.toWireError(error);
    send({ jsonrpc: '2.0', id, error: { code: ERROR_NUMBERS[wire.code], message: wire.message, data: { code: wire.code, ...wire.details } } });
  }

  function cancel(params: unknown): void {
    // The reader has checked that params.id is a number or a string.
    waitingById.get((params as { id: Id }).id)?.(CANCELLED);
  }

  function serve(method: AnyRequest, id: Id, raw: unknown): void {
    // As in binary: only a request that waits for its lock is kept for cancel, by the function that ends its wait.
    let cancelWait: CancelWait | undefined;
    const signal = (end: CancelWait): undefined => {
      waitingById.set(id, (cancelWait = end));
      return undefined;
    };
    const done = (): void => {
      if (cancelWait && waitingById.get(id) === cancelWait) waitingById.delete(id);
    };
    let outcome: unknown;
    try {
      const handler = session.handler(method);
      outcome = handler(method.params.fromJson(raw ?? {}), signal);
    } catch (error) {
      done();
      return fail(id, error);
    }
    if (!(outcome instanceof Promise)) {
      done();
      return result(id, method.result.toJson(outcome));
    }
    outcome.then(
      (value) => {
        done();
        result(id, method.result.toJson(value));
      },
      (error: unknown) => {
        done();
        fail(id, error);
      },
    );
  }

  function request(method: string, id: Id, params: unknown): void {
    const declared = BY_METHOD.get(method);
    if (declared) return serve(declared, id, params);
    try {
      switch (method) {
        case Initialize.method:
          return result(id, session.initialize(Initialize.fromJson(params), 'json'));
        case Release.method: {
          if (!session.initialized) throw new WireError('CACHE_NOT_INITIALIZED', `Send initialize before ${method}.`);
          session.release(Release.params.fromJson(params).handle);
          return result(id, null);
        }
        case CANCEL_REQUEST:
          cancel(params);
          return result(id, null);
        case Exit.method: {
          // Answered, then the connection closes as on the notification; the locks go at once.
          result(id, null);
          exited = true;
          reader.pause();
          void session.close();
          void link.drained().then(() => options.destroy());
          return;
        }
        default:
          send({ jsonrpc: '2.0', id, error: { code: METHOD_NOT_FOUND, message: `Unknown method ${method}.` } });
      }
    } catch (error) {
      fail(id, error);
    }
  }

  function notification(method: string, params: unknown): void {
    switch (method) {
      case Release.method:
        // Before initialize, a release has nothing to release.
        if (!session.initialized) return;
        try {
          session.release(Release.params.fromJson(params).handle);
        } catch (error) {
          session.log(`ignoring a cache/release: ${error instanceof Error ? error.message : String(error)}`);
        }
        return;
      case Exit.method:
        exited = true;
        options.destroy();
        return;
      case CANCEL_REQUEST:
        return cancel(params);
    }
    if ((BY_METHOD.has(method) || method === Initialize.method) && !loggedWithoutId.has(method)) {
      // A notification cannot be answered, so the request is dropped: a lock taken now would never be handed out.
      loggedWithoutId.add(method);
      session.log(`sent ${method} without an id: it is a request, and a request without an id gets no answer, so it was not carried out (logged once per method)`);
    }
    // Other notifications ($/setTrace and the like) are ignored, as JSON-RPC allows.
  }

  const reader = new FramedMessageReader(input, {
    maxMessageBytes: options.maxMessageBytes,
    reply: (response) => send(response),
    upgrade: options.upgrade,
  });
  reader.onError(options.onBroken);
  reader.listen((message) => {
    if (exited) return;
    const { method, id, params } = message as unknown as Incoming;
    if (id === undefined) notification(method, params);
    else request(method, id, params);
  });
  input.once('close', () => {
    waitingById.clear();
    void session.close();
  });

  const link: JsonLink = {
    end() {
      uncork();
      output.end();
    },
    drained() {
      uncork();
      if (output.destroyed || output.writableLength === 0) return Promise.resolve();
      return new Promise((resolve) => output.write(Buffer.alloc(0), () => resolve()));
    },
  };
  return link;
}
