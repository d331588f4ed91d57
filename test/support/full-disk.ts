import { closeSync, openSync, writeSync } from 'node:fs';

/** Writes `path` until the filesystem has no room left, as another program would. */
export function fillDisk(path: string): void {
  const fd = openSync(path, 'w');
  try {
    for (const chunk of [64 * 1024, 4096, 1]) {
      const bytes = Buffer.alloc(chunk, 0x5a);
      for (;;) {
        try {
          writeSync(fd, bytes);
        } catch (error) {
          if ((error as NodeJS.ErrnoException).code === 'ENOSPC') break;
          throw error;
        }
      }
    }
  } finally {
    closeSync(fd);
  }
}
