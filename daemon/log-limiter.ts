/** The most lines one connection adds to the log in a window of {@link CONNECTION_LOG_WINDOW_MS}. */
export const CONNECTION_LOG_LINES = 20;
export const CONNECTION_LOG_WINDOW_MS = 60_000;

export interface LogLimiterOptions {
  /** Where the lines let through, and the summaries, go. */
  write(line: string): void;
  /** Default {@link CONNECTION_LOG_LINES}. */
  maxLines?: number;
  /** Default {@link CONNECTION_LOG_WINDOW_MS}. */
  windowMs?: number;
  /** The clock, in milliseconds; default `performance.now`. */
  now?: () => number;
}

/**
 * Lets at most `maxLines` lines a window through and counts the others: the count goes to the log as one line when
 * a later window lets a line through, or on {@link LogLimiter.flush} (when the connection closes). So a client that
 * repeats a mistake (a malformed frame a thousand times) costs the log a few lines a minute, not one line each.
 */
export class LogLimiter {
  readonly #write: (line: string) => void;
  readonly #maxLines: number;
  readonly #windowMs: number;
  readonly #now: () => number;
  #windowStart: number;
  #lines = 0;
  #suppressed = 0;

  constructor(options: LogLimiterOptions) {
    this.#write = options.write;
    this.#maxLines = options.maxLines ?? CONNECTION_LOG_LINES;
    this.#windowMs = options.windowMs ?? CONNECTION_LOG_WINDOW_MS;
    this.#now = options.now ?? (() => performance.now());
    this.#windowStart = this.#now();
  }

  log(line: string): void {
    const now = this.#now();
    if (now - this.#windowStart >= this.#windowMs) {
      this.flush();
      this.#windowStart = now;
      this.#lines = 0;
    }
    if (this.#lines < this.#maxLines) {
      this.#lines++;
      this.#write(line);
    } else {
      this.#suppressed++;
    }
  }

  /** Logs how many lines were left out since the last summary, if any. */
  flush(): void {
    const count = this.#suppressed;
    if (count === 0) return;
    this.#suppressed = 0;
    const window = this.#windowMs % 1000 === 0 ? `${this.#windowMs / 1000} s` : `${this.#windowMs} ms`;
    this.#write(`${count} more line${count === 1 ? '' : 's'} suppressed (at most ${this.#maxLines} every ${window} per connection)`);
  }
}
