import { chmod, lstat, readdir } from 'node:fs/promises';
import { join } from 'node:path';

/** A path that other users could read or enter, with its mode then, and whether it is private now. */
export interface LoosePath {
  path: string;
  mode: number;
  madePrivate: boolean;
}

/**
 * Makes a data directory private: the directory and the directories in it 0700, their files 0600, and the
 * subdirectories of those 0700 without listing what they hold (the files of large values are created 0600, and
 * there may be millions). Symbolic links are left alone. Resolves to what was looser, so that the caller can tell
 * the user; a path it may not change (another user's) stays as it was.
 */
export async function makePrivate(directory: string): Promise<LoosePath[]> {
  const loose: LoosePath[] = [];
  const visit = async (path: string, depth: number): Promise<void> => {
    let info;
    try {
      info = await lstat(path);
    } catch {
      return;
    }
    if (!info.isDirectory() && !info.isFile()) return;
    const mode = info.mode & 0o7777;
    const wanted = mode & ~0o077;
    if (mode !== wanted) {
      const madePrivate = await chmod(path, wanted).then(
        () => true,
        () => false,
      );
      loose.push({ path, mode, madePrivate });
    }
    if (!info.isDirectory() || depth === 2) return;
    const names = await readdir(path).catch(() => []);
    for (const name of names) await visit(join(path, name), depth + 1);
  };
  await visit(directory, 0);
  return loose;
}
