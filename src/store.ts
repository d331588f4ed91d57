import type { Scope } from './scope-path.js';

/** A value as bytes with the name of the encoding it was written with: how stores and the wire carry values. */
export interface EncodedValue {
  readonly encoding: string;
  readonly bytes: Uint8Array;
}

/** What a store keeps for one item: the time it was modified and the value in the store's form. */
export interface StoredRecord<V> {
  readonly modified: number;
  readonly value: V;
}

/**
 * Where a local cache keeps its items, with no locking of its own: callers hold the item's lock
 * (or, for `clear`, the scope's) around every call. `V` is the stored form of a value: the value
 * itself in memory, encoded bytes on disk.
 */
export interface Store<V> {
  /**
   * Reads synchronously: LevelDB answers from its caches in microseconds, and a hop through libuv's thread
   * pool costs several times the read itself.
   */
  read(scope: Scope, id: string): StoredRecord<V> | undefined;
  write(scope: Scope, id: string, record: StoredRecord<V>): Promise<void>;
  delete(scope: Scope, id: string): Promise<void>;
  /** Removes the items of `scope` and of every scope nested in it. */
  clear(scope: Scope): Promise<void>;
  /**
   * While the store cannot serve reads for a moment (it is reopening its files after a failed write), a promise
   * that settles once it can; else `undefined`. A store that never pauses leaves it out.
   */
  readsPaused?(): Promise<void> | undefined;
  close(): Promise<void>;
}

/** An item as the daemon stores and sends it: its `modified` and its value's bytes with their encoding. */
export type EncodedRecord = StoredRecord<EncodedValue>;
