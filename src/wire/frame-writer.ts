import type { Writable } from 'node:stream';
import { FrameEncoder } from './frame-encoder.js';

/**
 * Writes frames in small groups: every {@link FLUSH_AFTER_FRAMES} frames (or as the owner says), or 64 KiB, or at
 * the end of the tick or turn, whichever comes first. Writing each frame alone costs a system call apiece, and each
 * write wakes the peer; writing a whole turn's frames at once can make the peers take turns instead of working at
 * the same time. Measured at 32 requests in flight on an idle machine, groups of 4 to 8 did best; on a machine busy
 * with other work, fewer and larger groups (see the daemon's and the client's settings).
 */
export const FLUSH_AFTER_FRAMES = 8;
const FLUSH_AFTER_BYTES = 64 * 1024;

export interface FrameWriterOptions {
  /** Runs after every write, to check the output's backlog. */
  afterFlush?: () => void;
  /** Writes once this many frames are queued (default {@link FLUSH_AFTER_FRAMES}). */
  flushAfterFrames?: number;
  /**
   * When the rest is written: `'tick'` (default) once the current callback and its promises are done,
   * `'turn'` once the event loop has run every callback of its I/O phase (`setImmediate`), so that what other
   * sockets' reads and finished writes to disk answer in the same turn goes out in the same write.
   */
  flushAt?: 'tick' | 'turn';
}

export class FrameWriter {
  /** Build each frame here (`begin`, fields, then {@link FrameWriter.sent}). */
  readonly encoder = new FrameEncoder();
  readonly #output: Writable;
  readonly #afterFlush: (() => void) | undefined;
  readonly #flushAfterFrames: number;
  readonly #perTurn: boolean;
  #frames = 0;
  #scheduled = false;

  constructor(output: Writable, options: FrameWriterOptions = {}) {
    this.#output = output;
    this.#afterFlush = options.afterFlush;
    this.#flushAfterFrames = options.flushAfterFrames ?? FLUSH_AFTER_FRAMES;
    this.#perTurn = options.flushAt === 'turn';
  }

  /** Closes the frame being built and queues it. */
  sent(): void {
    this.encoder.end();
    if (++this.#frames >= this.#flushAfterFrames || this.encoder.queuedBytes >= FLUSH_AFTER_BYTES) {
      this.flush();
    } else if (!this.#scheduled) {
      this.#scheduled = true;
      if (this.#perTurn) setImmediate(this.flush);
      else process.nextTick(this.flush);
    }
  }

  /** Writes every queued frame now. */
  readonly flush = (): void => {
    this.#scheduled = false;
    this.#frames = 0;
    const chunks = this.encoder.take();
    const output = this.#output;
    if (chunks.length === 0 || output.destroyed) return;
    if (chunks.length === 1) {
      output.write(chunks[0]);
    } else {
      output.cork();
      for (const chunk of chunks) output.write(chunk);
      output.uncork();
    }
    this.#afterFlush?.();
  };
}
