import type { Readable, Writable } from 'node:stream';
import { isCacheError } from '../src/errors.js';
import type { CancelWait } from '../src/lock-table.js';
import { type FrameCursor, FrameDecoder, MalformedFrame } from '../src/wire/frame-decoder.js';
import { FrameWriter } from '../src/wire/frame-writer.js';
import { readChunks } from '../src/wire/lent-reads.js';
import { type AnyRequest, FrameOp, Release, REQUESTS, type RequestMethod } from '../src/wire/protocol.js';
import { invalidParams, WireError } from '../src/wire/wire-error.js';
import { CANCELLED, type Session } from './session.js';

/** Reading from a client pauses while this many bytes of answers wait for it to read them. */
export const OUTPUT_HIGH_WATER_BYTES = 16 * 1024 * 1024;

/**
 * How the daemon groups its answers into writes (see {@link FrameWriter}): once per turn of the event loop, so that
 * the answers to sets whose batch was written in the same turn join the gets', and in groups of 16. Against a
 * `nextTick` flush in groups of 8, it cut the daemon's writes per request from 0.26 to 0.18 at 1x32 (README,
 * Performance).
 */
const ANSWERS_FLUSH_AFTER_FRAMES = 16;
const ANSWERS_FLUSH_AT: 'tick' | 'turn' = 'turn';

const BY_OP = new Map<number, AnyRequest>(REQUESTS.map((method) => [method.op, method]));

/** A connection served in the binary transport. */
export interface BinaryLink {
  /** Sends what is queued, then ends the output. */
  end(): void;
  /** Resolves once everything queued has been handed to the operating system (or the output failed). */
  drained(): Promise<void>;
}

/**
 * Serves one session in the binary transport (see PROTOCOL.md): every frame of a chunk is dispatched at once,
 * each through its method's layout, and answers go out in groups ({@link FrameWriter}). A frame that breaks
 * the framing closes the connection through `onBroken`; a well-framed frame that is not understood gets an
 * error answer.
 */
export function serveBinary(
  input: Readable,
  output: Writable,
  session: Session,
  options: { maxMessageBytes: number; onBroken: (error: Error) => void },
): BinaryLink {
  const decoder = new FrameDecoder({ maxFrameBytes: options.maxMessageBytes });
  /** Requests waiting for a lock, by request id, for cancel; a client that reuses an id in flight cancels the latest. */
  const waitingById = new Map<number, CancelWait>();
  let paused = false;
  const writer = new FrameWriter(output, {
    flushAfterFrames: ANSWERS_FLUSH_AFTER_FRAMES,
    flushAt: ANSWERS_FLUSH_AT,
    afterFlush: () => {
      if (paused || output.writableLength <= OUTPUT_HIGH_WATER_BYTES) return;
      // The client does not read its answers: stop dispatching its requests (even those of a chunk already
      // read) until it catches up.
      paused = true;
      input.pause();
      session.pauseOutput(true);
      output.once('drain', () => {
        paused = false;
        session.pauseOutput(false);
        if (input.destroyed) return;
        input.resume();
        onData(Buffer.alloc(0), false);
      });
    },
  });
  const { encoder, flush } = writer;

  function fail(requestId: number, error: unknown): void {
    // The requests of a closed connection end with it: no answer to build for each (a dropped waiter costs little).
    if (output.destroyed && isCacheError(error, 'CACHE_CONNECTION_LOST')) return;
    const wire = session.toWireError(error);
    encoder.begin(FrameOp.Error, requestId).string(wire.code).string(wire.message);
    writer.sent();
  }

  function answer<R>(method: RequestMethod<unknown, R>, requestId: number, result: R): void {
    method.result.writeBinary(encoder.begin(FrameOp.Result, requestId), result);
    writer.sent();
  }

  function dispatch(method: AnyRequest, frame: FrameCursor): void {
    const requestId = frame.requestId;
    const params = method.params.readBinary(frame);
    frame.done();
    // Only a request that waits for its lock is kept for cancel, and with no abort signal: a waiter costs little.
    let cancel: CancelWait | undefined;
    const signal = (end: CancelWait): undefined => {
      waitingById.set(requestId, (cancel = end));
      return undefined;
    };
    const done = (): void => {
      if (cancel && waitingById.get(requestId) === cancel) waitingById.delete(requestId);
    };
    const outcome = session.handler(method)(params, signal);
    if (!(outcome instanceof Promise)) return answer(method, requestId, outcome);
    outcome.then(
      (result) => {
        done();
        answer(method, requestId, result);
      },
      (error: unknown) => {
        done();
        fail(requestId, error);
      },
    );
  }

  /** Handles one frame; `false` stops the decoder while the client does not read its answers. */
  function onFrame(frame: FrameCursor): boolean {
    const op = frame.op;
    try {
      if (op === Release.op) {
        const { handle } = Release.params.readBinary(frame);
        frame.done();
        session.release(handle);
      } else if (op === FrameOp.Cancel) {
        frame.done();
        waitingById.get(frame.requestId)?.(CANCELLED);
      } else {
        const method = BY_OP.get(op);
        if (!method) throw new WireError('CACHE_INVALID_REQUEST', `Unknown op 0x${op.toString(16)}.`);
        dispatch(method, frame);
      }
    } catch (error) {
      const refusal = error instanceof MalformedFrame ? invalidParams(error.message) : error;
      // Release and cancel have no answer: a malformed one is logged and dropped.
      if (op === Release.op || op === FrameOp.Cancel) session.log(`ignoring a malformed frame: ${String(refusal)}`);
      else fail(frame.requestId, refusal);
    }
    return !paused;
  }

  let broken = false;
  // A socket of the daemon's lends its chunks (read into one buffer of its own): the decoder copies what it keeps.
  const onData = (chunk: Buffer, borrowed: boolean): void => {
    if (broken) return;
    try {
      decoder.push(chunk, onFrame, borrowed);
    } catch (error) {
      broken = true;
      options.onBroken(error as Error);
    }
  };
  input.once('close', () => {
    waitingById.clear();
    void session.close();
  });
  readChunks(input, onData);

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
