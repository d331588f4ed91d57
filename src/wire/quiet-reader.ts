/**
 * Turns off a vscode-jsonrpc reader's partial-message timer: nothing in hoard listens to its events, and once a
 * peer has sent half a message and left, the timer re-arms forever and keeps the process alive.
 */
export function quietReader<R extends { partialMessageTimeout: number }>(reader: R): R {
  reader.partialMessageTimeout = 0;
  return reader;
}
