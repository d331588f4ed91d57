import type { ExpiryOptions, GetHandle, GetSetHandle, MissedGetSetHandle, ReservedFile } from './cache.js';
import type { Scope } from './scope-path.js';
import type { StoreListing } from './store.js';

/**
 * What a {@link CacheView} delegates to once it has checked the arguments: the local lock table and
 * store, or a connection to the daemon. Every method receives validated arguments.
 */
export interface CacheBackend<T> {
  /** Resolves to `null` only with `wait: false`, when the shared lock cannot be taken now. */
  get(scope: Scope, id: string, options: { signal?: AbortSignal | undefined; wait?: boolean }): Promise<GetHandle<T> | null>;
  getset(
    scope: Scope,
    id: string,
    options: { wait: boolean; signal?: AbortSignal | undefined },
  ): Promise<GetSetHandle<T> | MissedGetSetHandle>;
  set(scope: Scope, id: string, value: T, options: { modified: number } & ExpiryOptions): Promise<void>;
  reserveFile(): Promise<ReservedFile>;
  /** `path` is unchecked: the backend knows the paths it handed out. */
  setFile(scope: Scope, id: string, path: string, options: { modified: number } & ExpiryOptions): Promise<void>;
  delete(scope: Scope, id: string): Promise<void>;
  clear(scope: Scope): Promise<void>;
  list(scope: Scope, options: { cursor?: string; limit: number }): Promise<StoreListing>;
  close(): Promise<void>;
}

/** The handle `getset(id, { wait: false })` resolves to when the lock is taken. */
export const MISSED_GETSET: MissedGetSetHandle = Object.freeze({
  item: null,
  stale: null,
  set: null,
  setFile: null,
  async release() {},
  async [Symbol.asyncDispose]() {},
});

/** The current time in seconds since the Unix epoch, the default `modified`. */
export function nowSeconds(): number {
  return Date.now() / 1000;
}
