import type { Readable, Writable } from 'node:stream';
import { FrameCursor, FrameDecoder, MalformedFrame } from '../src/frame-decoder.js';
import { FrameEncoder } from '../src/frame-encoder.js';
import { BinaryOp } from '../src/protocol.js';
import { checkScope } from './serve.js';
import { CANCELLED, checkEncodingName, invalidParams, type Session, type WireValueItem, WireError } from './session.js';

/** Reading from a client pauses while this many bytes of answers wait for it to read them. */
const OUTPUT_HIGH_WATER_BYTES = 16 * 1024 * 1024;

/** A connection served in the binary transport. */
export interface BinaryLink {
  /** Sends what is queued, then ends the output. */
  end(): void;
  /** Resolves once everything queued has been handed to the operating system (or the output failed). */
  drained(): Promise<void>;
}

function writeItem(encoder: FrameEncoder, item: WireValueItem | null): void {
  if (!item) {
    encoder.u8(0);
    return;
  }
  encoder.u8(1).f64(item.modified).string(item.encoding).bytes(item.bytes);
}

/**
 * Serves one session in the binary transport (see PROTOCOL.md): every frame of a chunk is dispatched at once,
 * and every answer ready by the end of the turn goes out in one write. A frame that breaks the framing closes
 * the connection through `onBroken`; a well-framed frame that is not understood gets an error answer.
 */
export function serveBinary(
  input: Readable,
  output: Writable,
  session: Session,
  options: { maxMessageBytes: number; onBroken: (error: Error) => void },
): BinaryLink {
  const encoder = new FrameEncoder();
  const decoder = new FrameDecoder({ maxFrameBytes: options.maxMessageBytes });
  /** Requests that may still be waiting, by request id, so that a cancel or the end of the session reaches them. */
  const running = new Map<number, AbortController>();
  let flushing = false;
  let paused = false;

  function flush(): void {
    flushing = false;
    const chunks = encoder.take();
    if (chunks.length === 0 || output.destroyed) return;
    if (chunks.length === 1) {
      output.write(chunks[0]);
    } else {
      output.cork();
      for (const chunk of chunks) output.write(chunk);
      output.uncork();
    }
    if (!paused && output.writableLength > OUTPUT_HIGH_WATER_BYTES) {
      // The client does not read its answers: stop reading its requests until it catches up.
      paused = true;
      input.pause();
      output.once('drain', () => {
        paused = false;
        input.resume();
      });
    }
  }

  function sent(): void {
    encoder.end();
    if (!flushing) {
      flushing = true;
      process.nextTick(flush);
    }
  }

  function fail(requestId: number, error: unknown): void {
    const wire = session.toWireError(error);
    encoder.begin(BinaryOp.Error, requestId).string(wire.code).string(wire.message);
    sent();
  }

  function run<R>(requestId: number, call: (signal: AbortSignal) => Promise<R>, answer: (result: R) => void): void {
    const controller = new AbortController();
    running.set(requestId, controller);
    call(controller.signal).then(
      (result) => {
        if (running.get(requestId) === controller) running.delete(requestId);
        encoder.begin(BinaryOp.Result, requestId);
        answer(result);
        sent();
      },
      (error: unknown) => {
        if (running.get(requestId) === controller) running.delete(requestId);
        fail(requestId, error);
      },
    );
  }

  const empty = (): void => {};

  function dispatch(frame: FrameCursor): void {
    const requestId = frame.requestId;
    switch (frame.op) {
      case BinaryOp.Get: {
        const scope = checkScope(frame.strings());
        const id = frame.string();
        frame.done();
        return run(requestId, (signal) => session.get(scope, id, signal), ({ handle, item }) => {
          encoder.u64(handle);
          writeItem(encoder, item);
        });
      }
      case BinaryOp.GetSet: {
        const scope = checkScope(frame.strings());
        const id = frame.string();
        const wait = frame.u8();
        frame.done();
        if (wait > 1) throw invalidParams('wait must be 0 or 1');
        return run(requestId, (signal) => session.getset(scope, id, wait === 1, signal), ({ handle, item }) => {
          if (handle === null) {
            encoder.u8(0);
            return;
          }
          encoder.u8(1).u64(handle);
          writeItem(encoder, item);
        });
      }
      case BinaryOp.HandleSet: {
        const handle = frame.u64();
        const encoding = frame.string();
        checkEncodingName(encoding);
        const bytes = frame.bytes();
        frame.done();
        return run(requestId, () => session.handleSet(handle, { encoding, bytes }), empty);
      }
      case BinaryOp.Set: {
        const scope = checkScope(frame.strings());
        const id = frame.string();
        const modified = frame.f64();
        const encoding = frame.string();
        checkEncodingName(encoding);
        const bytes = frame.bytes();
        frame.done();
        return run(requestId, (signal) => session.set(scope, id, { encoding, bytes }, modified, signal), empty);
      }
      case BinaryOp.Delete: {
        const scope = checkScope(frame.strings());
        const id = frame.string();
        frame.done();
        return run(requestId, (signal) => session.delete(scope, id, signal), empty);
      }
      case BinaryOp.Clear: {
        const scope = checkScope(frame.strings());
        frame.done();
        return run(requestId, (signal) => session.clear(scope, signal), empty);
      }
      case BinaryOp.Status:
        frame.done();
        return run(requestId, () => session.status(), (status) => void encoder.string(JSON.stringify(status)));
      case BinaryOp.Shutdown:
        frame.done();
        session.shutdown();
        encoder.begin(BinaryOp.Result, requestId);
        return sent();
      default:
        throw new WireError('CACHE_INVALID_REQUEST', `Unknown op 0x${frame.op.toString(16)}.`);
    }
  }

  function onFrame(frame: FrameCursor): void {
    const op = frame.op;
    try {
      if (op === BinaryOp.Release) {
        const handle = frame.u64();
        frame.done();
        session.release(handle);
      } else if (op === BinaryOp.Cancel) {
        frame.done();
        running.get(frame.requestId)?.abort(CANCELLED);
      } else {
        dispatch(frame);
      }
    } catch (error) {
      const refusal = error instanceof MalformedFrame ? invalidParams(error.message) : error;
      // Release and cancel have no answer: a malformed one is logged and dropped.
      if (op === BinaryOp.Release || op === BinaryOp.Cancel) session.log(`ignoring a malformed frame: ${String(refusal)}`);
      else fail(frame.requestId, refusal);
    }
  }

  const onData = (chunk: Buffer): void => {
    try {
      decoder.push(chunk, onFrame);
    } catch (error) {
      input.off('data', onData);
      options.onBroken(error as Error);
    }
  };
  input.on('data', onData);
  input.once('close', () => {
    // Ending the session aborts its signal at once; the waits still queued end with the same reason.
    void session.close();
    for (const controller of running.values()) controller.abort(session.gone.reason);
    running.clear();
  });
  input.resume();

  return {
    end() {
      flush();
      output.end();
    },
    drained() {
      flush();
      if (output.destroyed || output.writableLength === 0) return Promise.resolve();
      return new Promise((resolve) => output.write(Buffer.alloc(0), () => resolve()));
    },
  };
}
