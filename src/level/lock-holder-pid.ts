/**
 * Reading `/proc/locks`: which process holds a POSIX lock on a file.
 *
 * Each line names the locked file by its device and inode, as `MAJOR:MINOR:INODE` (hexadecimal, hexadecimal,
 * decimal), e.g. `1: POSIX  ADVISORY  WRITE 1234 fd:01:5678 0 EOF`; a line with `->` is a process waiting for that
 * lock, not holding it. Inode numbers repeat across file systems (tmpfs numbers its files from 2 up), so the device
 * must match too.
 */

/** The major and minor numbers of a device number as `stat` gives it (glibc's and Linux's encoding). */
function majorMinor(dev: bigint): { major: bigint; minor: bigint } {
  return {
    major: ((dev >> 8n) & 0xfffn) | ((dev >> 32n) & ~0xfffn),
    minor: (dev & 0xffn) | ((dev >> 12n) & ~0xffn),
  };
}

/** The pid that `locks` (the text of `/proc/locks`) says holds a POSIX lock on the file of `dev` and `ino` (from a bigint `stat`). */
export function lockHolderPid(locks: string, file: { dev: bigint; ino: bigint }): number | undefined {
  const { major, minor } = majorMinor(file.dev);
  for (const line of locks.split('\n')) {
    const fields = line.trim().split(/\s+/);
    if (fields[1] === '->') continue;
    const at = fields.findIndex((field) => /^[0-9a-f]+:[0-9a-f]+:\d+$/i.test(field));
    if (at < 1) continue;
    const [maj, min, ino] = fields[at]!.split(':') as [string, string, string];
    if (BigInt(`0x${maj}`) === major && BigInt(`0x${min}`) === minor && BigInt(ino) === file.ino) return Number(fields[at - 1]);
  }
  return undefined;
}
