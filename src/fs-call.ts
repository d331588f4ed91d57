/** Runs one callback-style `fs` call as a promise: each is one hop through libuv's thread pool, where `fs/promises` takes more. */
export function fsCall<R>(start: (done: (error: NodeJS.ErrnoException | null, result?: R) => void) => void): Promise<R> {
  return new Promise((resolve, reject) => start((error, result) => (error ? reject(error) : resolve(result as R))));
}
