/** How often one kind of event may be logged. */
export const LOG_INTERVAL_MS = 60_000;

/**
 * At most one log line a minute for each kind of event (a failure that repeats, as every write to a full disk, or every
 * command an ACL refuses): the next line let through says how many of its kind were left out since the last.
 */
export class PerKindLog {
  readonly #write: (line: string) => void;
  readonly #kinds = new Map<string, { atMs: number; leftOut: number }>();

  constructor(write: (line: string) => void) {
    this.#write = write;
  }

  log(kind: string, line: string): void {
    const nowMs = performance.now();
    const last = this.#kinds.get(kind);
    if (last !== undefined && nowMs - last.atMs < LOG_INTERVAL_MS) {
      last.leftOut++;
      return;
    }
    this.#kinds.set(kind, { atMs: nowMs, leftOut: 0 });
    const leftOut = last?.leftOut ?? 0;
    this.#write(leftOut === 0 ? line : `${line} (and ${leftOut} more like it since the last such line)`);
  }
}
