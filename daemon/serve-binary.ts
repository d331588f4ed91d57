import type { Readable, Writable } from 'node:stream';
import { FrameCursor, FrameDecoder, MalformedFrame } from '../src/frame-decoder.js';
import type { FrameEncoder } from '../src/frame-encoder.js';
import { FrameWriter } from '../src/frame-writer.js';
import type { SignalSource } from '../src/lock-table.js';
import { BinaryOp } from '../src/protocol.js';
import { CANCELLED, checkEncodingName, checkScope, invalidParams, type Session, type WireValueItem, WireError } from './session.js';

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
 * and answers go out in groups ({@link FrameWriter}). A frame that breaks the framing closes
 * the connection through `onBroken`; a well-framed frame that is not understood gets an error answer.
 */
export function serveBinary(
  input: Readable,
  output: Writable,
  session: Session,
  options: { maxMessageBytes: number; onBroken: (error: Error) => void },
): BinaryLink {
  const decoder = new FrameDecoder({ maxFrameBytes: options.maxMessageBytes });
  /** Requests waiting for a lock, by request id, for cancel; a client that reuses an id in flight cancels the latest. */
  const waitingById = new Map<number, AbortController>();
  let paused = false;
  const writer = new FrameWriter(output, {
    afterFlush: () => {
      if (paused || output.writableLength <= OUTPUT_HIGH_WATER_BYTES) return;
      // The client does not read its answers: stop dispatching its requests (even those of a chunk already
      // read) until it catches up.
      paused = true;
      input.pause();
      output.once('drain', () => {
        paused = false;
        if (input.destroyed) return;
        input.resume();
        onData(Buffer.alloc(0));
      });
    },
  });
  const { encoder, flush } = writer;
  const sent = (): void => writer.sent();

  function fail(requestId: number, error: unknown): void {
    const wire = session.toWireError(error);
    encoder.begin(BinaryOp.Error, requestId).string(wire.code).string(wire.message);
    sent();
  }

  function run<R>(requestId: number, call: (signal: SignalSource) => Promise<R>, answer: (result: R) => void): void {
    // A request that gets its lock at once never needs a signal: one is made only for a request that waits.
    let wait: ReturnType<Session['waitController']> | undefined;
    const signal = (): AbortSignal => {
      wait = session.waitController();
      waitingById.set(requestId, wait.controller);
      return wait.controller.signal;
    };
    const done = (): void => {
      if (!wait) return;
      wait.done();
      if (waitingById.get(requestId) === wait.controller) waitingById.delete(requestId);
    };
    call(signal).then(
      (result) => {
        done();
        encoder.begin(BinaryOp.Result, requestId);
        answer(result);
        sent();
      },
      (error: unknown) => {
        done();
        fail(requestId, error);
      },
    );
  }

  const empty = (): void => {};
  const writeGet = ({ handle, item }: { handle: number; item: WireValueItem | null }): void => {
    encoder.u64(handle);
    writeItem(encoder, item);
  };

  function dispatch(frame: FrameCursor): void {
    const requestId = frame.requestId;
    switch (frame.op) {
      case BinaryOp.Get: {
        const scope = checkScope(frame.strings());
        const id = frame.string();
        frame.done();
        const now = session.getNow(scope, id);
        if (!now) return run(requestId, (signal) => session.get(scope, id, signal), writeGet);
        encoder.begin(BinaryOp.Result, requestId);
        writeGet(now);
        return sent();
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

  /** Handles one frame; `false` stops the decoder while the client does not read its answers. */
  function onFrame(frame: FrameCursor): boolean {
    const op = frame.op;
    try {
      if (op === BinaryOp.Release) {
        const handle = frame.u64();
        frame.done();
        session.release(handle);
      } else if (op === BinaryOp.Cancel) {
        frame.done();
        waitingById.get(frame.requestId)?.abort(CANCELLED);
      } else {
        dispatch(frame);
      }
    } catch (error) {
      const refusal = error instanceof MalformedFrame ? invalidParams(error.message) : error;
      // Release and cancel have no answer: a malformed one is logged and dropped.
      if (op === BinaryOp.Release || op === BinaryOp.Cancel) session.log(`ignoring a malformed frame: ${String(refusal)}`);
      else fail(frame.requestId, refusal);
    }
    return !paused;
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
    waitingById.clear();
    void session.close();
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
