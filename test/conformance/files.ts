import { lstat, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { serialize } from 'node:v8';
import { expect, test } from 'vitest';
import type { Cache } from '../../src/index.js';
import { eventually, expectCode, type Features, isFree, type Suite, valueOf } from './support.js';

/** A value and its bytes as this kind of cache's codec writes them (a memory cache keeps a file's bytes as they are). */
function sample(kind: Features['values'], length: number): { bytes: Buffer; value: unknown } {
  switch (kind) {
    case 'json': {
      const value = { text: 'x'.repeat(length) };
      return { bytes: Buffer.from(JSON.stringify(value)), value };
    }
    case 'structured': {
      const value = new Map([['text', 'y'.repeat(length)]]);
      return { bytes: serialize(value), value };
    }
    default: {
      const bytes = Buffer.alloc(length, 7);
      bytes[0] = length % 251;
      return { bytes, value: new Uint8Array(bytes) };
    }
  }
}

/** Another value than any {@link sample}, to see what stands after a refusal. */
function other(kind: Features['values']): unknown {
  return kind === 'binary' || kind === 'as-given' ? new Uint8Array([1, 2, 3]) : 'old';
}

async function gone(path: string): Promise<boolean> {
  return lstat(path).then(
    () => false,
    (error: NodeJS.ErrnoException) => error.code === 'ENOENT',
  );
}

/** Writes without passing the value: reserveFile, then setFile or a getset handle's setFile. */
export function files({ open, features }: Suite): void {
  const kind = features.values;
  const stored = async (cache: Cache<unknown>, id: string): Promise<unknown> => {
    const value = await valueOf(cache, id);
    return value instanceof Uint8Array ? new Uint8Array(value) : value;
  };

  test('reserveFile gives an empty private file; setFile stores what was written there, small or large, and takes the file', async () => {
    const { cache } = await open();
    for (const length of [10, 100_000]) {
      await using reserved = await cache.reserveFile();
      const info = await stat(reserved.path);
      expect(info.isFile() && info.size === 0 && (info.mode & 0o077) === 0).toBe(true);
      const { bytes, value } = sample(kind, length);
      await writeFile(reserved.path, bytes);
      await cache.setFile(`id${length}`, reserved.path, { modified: 12.5 });
      expect(await gone(reserved.path)).toBe(true);
      if (!features.stores) {
        expect(await valueOf(cache, `id${length}`)).toBeUndefined();
        continue;
      }
      expect(await stored(cache, `id${length}`)).toStrictEqual(value);
      await using got = await cache.get(`id${length}`);
      expect(got.item!.modified).toBe(12.5);
      // A committed path is spent: it names nothing of the cache's any more.
      await expect(cache.setFile(`id${length}`, reserved.path)).rejects.toBeInstanceOf(TypeError);
    }
  });

  test("a getset handle's setFile writes within the held lock: readers see the old value until it is done", async () => {
    const { cache } = await open();
    if (features.stores) await cache.set('id', other(kind));
    const gs = await cache.getset('id');
    await using reserved = await cache.reserveFile();
    const { bytes, value } = sample(kind, 50_000);
    await writeFile(reserved.path, bytes);
    expect(await cache.get('id', { wait: false })).toBeNull();
    await gs.setFile(reserved.path, { ttlMs: 3_600_000 });
    expect(await cache.get('id', { wait: false })).toBeNull();
    await gs.release();
    await using another = await cache.reserveFile();
    await expectCode(gs.setFile(another.path), 'CACHE_LOCK_NOT_HELD');
    if (features.stores) {
      expect(await stored(cache, 'id')).toStrictEqual(value);
      await using got = await cache.get('id');
      expect(got.item!.expires).not.toBeNull();
    }
    expect(await isFree(cache, 'id')).toBe(true);
  });

  test('a path the cache did not reserve, or one disposed of, is a TypeError and changes nothing', async () => {
    const { cache } = await open();
    if (features.stores) await cache.set('id', other(kind));
    await expect(cache.setFile('id', '/etc/passwd')).rejects.toBeInstanceOf(TypeError);
    await expect(cache.setFile('id', 42 as unknown as string)).rejects.toBeInstanceOf(TypeError);
    const reserved = await cache.reserveFile();
    await writeFile(reserved.path, sample(kind, 10).bytes);
    await reserved[Symbol.asyncDispose]();
    expect(await gone(reserved.path)).toBe(true);
    await expect(cache.setFile('id', reserved.path)).rejects.toBeInstanceOf(TypeError);
    {
      await using gs = await cache.getset('id');
      await expect(gs.setFile(reserved.path)).rejects.toBeInstanceOf(TypeError);
    }
    if (features.stores) expect(await stored(cache, 'id')).toStrictEqual(other(kind));
  });

  test('a symbolic link put at the path is refused with CACHE_FILE_REFUSED; the reservation stays, to be written again', async () => {
    const { cache } = await open();
    if (features.stores) await cache.set('id', other(kind));
    await using reserved = await cache.reserveFile();
    const target = `${reserved.path}.target`;
    await writeFile(target, sample(kind, 10).bytes);
    await rm(reserved.path);
    await symlink(target, reserved.path);
    await expectCode(cache.setFile('id', reserved.path), 'CACHE_FILE_REFUSED');
    if (features.stores) expect(await stored(cache, 'id')).toStrictEqual(other(kind));
    await rm(reserved.path);
    await rm(target);
    const { bytes, value } = sample(kind, 20);
    await writeFile(reserved.path, bytes, { mode: 0o600 });
    await cache.setFile('id', reserved.path);
    if (features.stores) expect(await stored(cache, 'id')).toStrictEqual(value);
  });

  test('closing the cache removes the files reserved and not committed', async () => {
    const subject = await open();
    const reserved = await subject.cache.reserveFile();
    await writeFile(reserved.path, sample(kind, 10).bytes);
    await subject.close();
    // A daemon's reservation goes when the daemon sees the connection end, just after the client's close resolves.
    await eventually(() => gone(reserved.path), 'the reserved file is removed');
  });
}
