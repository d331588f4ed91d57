import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

function findVersion(): string {
  // Works from the sources and from dist/, which sit at different depths below package.json.
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let depth = 0; depth < 4; depth++, dir = dirname(dir)) {
    try {
      const manifest = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')) as { name?: string; version?: string };
      if (manifest.name === 'hoard' && manifest.version) return manifest.version;
    } catch {
      // Not here; look one level up.
    }
  }
  return '0.0.0-unknown';
}

/** This package's version, from its package.json. */
export const VERSION: string = findVersion();
