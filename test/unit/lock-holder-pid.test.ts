import { readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { Level } from 'level';
import { describe, expect, onTestFinished, test } from 'vitest';
import { lockHolderPid } from '../../src/level/lock-holder-pid.js';
import { tempDir } from '../support/temp-dir.js';

/** A device number as `stat` gives it, from its major and minor numbers (Linux's encoding). */
function dev(major: number, minor: number): bigint {
  const [maj, min] = [BigInt(major), BigInt(minor)];
  return (min & 0xffn) | ((maj & 0xfffn) << 8n) | ((min & ~0xffn) << 12n) | ((maj & ~0xfffn) << 32n);
}

describe('lockHolderPid', () => {
  // Made up: inode 12 locked on two tmpfs mounts (devices 0:45 and 0:46), a waiter, and a disk with large numbers.
  const locks = [
    '1: POSIX  ADVISORY  WRITE 1111 00:2d:12 0 EOF',
    '2: POSIX  ADVISORY  WRITE 2222 00:2e:12 0 EOF',
    '2: -> POSIX  ADVISORY  WRITE 3333 00:2f:12 0 EOF',
    '3: OFDLCK ADVISORY  READ  -1 fe:00:12 0 EOF',
    '4: POSIX  ADVISORY  WRITE 4444 103:12c:987654321 0 EOF',
    '',
  ].join('\n');

  test('names the holder of the file on its own device, not of the same inode on another', () => {
    expect(lockHolderPid(locks, { dev: dev(0, 45), ino: 12n })).toBe(1111);
    expect(lockHolderPid(locks, { dev: dev(0, 46), ino: 12n })).toBe(2222);
    expect(lockHolderPid(locks, { dev: dev(259, 300), ino: 987654321n })).toBe(4444);
  });

  test('a process waiting for a lock is no holder, and an unlocked file has none', () => {
    expect(lockHolderPid(locks, { dev: dev(0, 47), ino: 12n })).toBeUndefined();
    expect(lockHolderPid(locks, { dev: dev(0, 45), ino: 13n })).toBeUndefined();
    expect(lockHolderPid(locks, { dev: dev(8, 1), ino: 12n })).toBeUndefined();
  });

  test('names this process for the lock its LevelDB holds, as the kernel writes it', async () => {
    const directory = join(await tempDir('hu-'), 'db');
    const db = new Level(directory);
    await db.open();
    onTestFinished(() => db.close());
    const { dev: device, ino } = await stat(join(directory, 'LOCK'), { bigint: true });
    expect(lockHolderPid(await readFile('/proc/locks', 'utf8'), { dev: device, ino })).toBe(process.pid);
  });
});
