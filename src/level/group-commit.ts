/** How {@link GroupCommit} writes a batch and tells its owner how it went. */
export interface BatchWriter<W> {
  /** Writes `writes` as one batch. */
  write(writes: readonly W[]): Promise<void>;
  /** Runs once the batch is written, before any of its callers hears of it. */
  written(writes: readonly W[]): void;
  /** Runs if the batch failed; returns the error that each of its callers gets. */
  failed(writes: readonly W[], error: unknown): unknown;
}

/** How a queued write's caller is told how its batch went. */
interface Settle {
  resolve(): void;
  reject(error: unknown): void;
}

/**
 * Gathers the writes of one turn into one batch. While a batch is being written, new writes wait and go
 * together in the next one: a LevelDB write costs tens of microseconds however small, so under load the
 * batches grow instead of the queue.
 */
export class GroupCommit<W extends object> {
  readonly #writer: BatchWriter<W>;
  /** The writes queued, and beside them (same index) the settling of their callers' promises. */
  #batch: W[] = [];
  #settles: Settle[] = [];
  #writing = false;

  constructor(writer: BatchWriter<W>) {
    this.#writer = writer;
  }

  /** Queues `write` for the batch of this turn; resolves once the batch is written. */
  add(write: W): Promise<void> {
    return new Promise((resolve, reject) => {
      this.#settles.push({ resolve, reject });
      if (this.#batch.push(write) === 1 && !this.#writing) process.nextTick(() => this.#flush());
    });
  }

  /** Writes the queued writes as one batch, then the writes queued meanwhile. */
  #flush(): void {
    const writes = this.#batch;
    const settles = this.#settles;
    if (writes.length === 0) return;
    this.#batch = [];
    this.#settles = [];
    this.#writing = true;
    this.#writer.write(writes).then(
      () => {
        this.#writer.written(writes);
        for (const { resolve } of settles) resolve();
        this.#writing = false;
        this.#flush();
      },
      (error: unknown) => {
        const failure = this.#writer.failed(writes, error);
        for (const { reject } of settles) reject(failure);
        this.#writing = false;
        this.#flush();
      },
    );
  }
}
