import { execFileSync } from 'node:child_process';
import { mkdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { expect, onTestFinished, test } from 'vitest';
import { PendingChanges } from '../daemon/pending-changes.js';
import { itemKey, scopeOf } from '../src/scope-path.js';
import { tempDir } from './support/temp-dir.js';
import { fillDisk } from './support/full-disk.js';

/** The file of changes waiting for the tier on a real full disk (a small tmpfs, root only). */

async function smallDisk(): Promise<string> {
  const disk = join(await tempDir('hpd-'), 'disk');
  await mkdir(disk);
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', disk]);
  onTestFinished(() => void execFileSync('umount', ['-l', disk]));
  return disk;
}

test('saved() after a save that failed on a full disk writes the file again, rejecting while the disk is full', async () => {
  const disk = await smallDisk();
  const path = join(disk, 'tier-pending.json');
  const changes = new PendingChanges({ path, keyPrefix: 'hoard', log: () => {} });
  fillDisk(join(disk, 'filler'));
  const key = itemKey(scopeOf(['a']), 'k');
  expect(changes.addKey('a', key)).toBe(true);
  await expect(changes.save()).rejects.toMatchObject({ code: 'ENOSPC' });
  // The same change again records nothing new: the caller waits for saved(), which must not resolve with no file.
  expect(changes.addKey('a', key)).toBe(false);
  // Before the fix, saved() resolved: the change was acknowledged with nothing on disk.
  await expect(changes.saved()).rejects.toMatchObject({ code: 'ENOSPC' });
  await rm(join(disk, 'filler'));
  await changes.saved();
  expect(JSON.parse(await readFile(path, 'utf8'))).toMatchObject({ tops: [{ top: 'a', keys: [key] }] });
  // Written: nothing more to do.
  await changes.saved();
});
