import { closeSync, fstatSync, openSync, renameSync, writeSync } from 'node:fs';

/** The size past which the daemon's log file is rotated, in bytes. */
export const LOG_FILE_MAX_BYTES = 1024 * 1024;

/**
 * A log file that never grows past `maxBytes` (default {@link LOG_FILE_MAX_BYTES}): before a line would take it
 * past, the file is renamed to `<path>.1` (replacing the one before) and a new file started, so the log never takes
 * more than twice `maxBytes`, and its last line is always the newest. Files are created 0600.
 *
 * Each line is appended synchronously, so that the last lines are on disk when the process exits, and through its
 * own `open` in append mode, so that several daemons (of several data directories) can share one file. A line
 * that cannot be written (a full disk) is dropped: logging never stops the daemon.
 */
export class LogFile {
  readonly path: string;
  readonly #maxBytes: number;

  constructor(path: string, options: { maxBytes?: number } = {}) {
    this.path = path;
    this.#maxBytes = options.maxBytes ?? LOG_FILE_MAX_BYTES;
  }

  write(line: string): void {
    const bytes = Buffer.from(`${line}\n`, 'utf8');
    try {
      let fd = openSync(this.path, 'a', 0o600);
      try {
        const size = fstatSync(fd).size;
        if (size > 0 && size + bytes.length > this.#maxBytes) {
          closeSync(fd);
          this.#rotate();
          fd = openSync(this.path, 'a', 0o600);
        }
        writeSync(fd, bytes);
      } finally {
        closeSync(fd);
      }
    } catch {
      // Nowhere to report it: the line is lost, and the daemon goes on.
    }
  }

  #rotate(): void {
    try {
      renameSync(this.path, `${this.path}.1`);
    } catch (error) {
      // Another daemon sharing the file rotated it first.
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
    }
  }
}
