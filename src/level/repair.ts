import { realpath } from 'node:fs/promises';
import { Level } from 'level';
import { storageError } from '../errors.js';
import { lockDirectory, openError, releaseDirectory } from './exclusive-open.js';
import { RECENCY_BUCKET_MS } from './level-store.js';
import { rebuildIndexes } from './rebuild-indexes.js';
import { BLOB_PREFIX, decodeFields, decodePointer, inChunks, ITEM_PREFIX, range, withPrefix } from './records.js';

/**
 * Runs LevelDB's repair on `directory`, recovering what it can of a damaged database, then rebuilds the index of
 * large values' files and the counted sizes with the meta and index entries. It holds the directory's instance lock
 * throughout, so no daemon or LevelCache opens the database meanwhile. `beforeRepair` runs once the directory is locked, before anything changes (tests start a
 * daemon there).
 * @throws CacheError `CACHE_LOCKED`, naming the holder when it can, while a daemon or another program has the
 * directory open; `CACHE_STORAGE` when the repair fails.
 */
export async function repairLevelStore(directory: string, options: { beforeRepair?: () => Promise<void> } = {}): Promise<void> {
  const real = await realpath(directory);
  await lockDirectory(real, { role: 'repair' });
  try {
    // Opening takes LevelDB's own lock, which tells whether a program that ignores the instance lock (an older hoard)
    // holds the database; a damaged one may not open at all.
    const probe = new Level<Buffer, Buffer>(real, { keyEncoding: 'buffer', valueEncoding: 'buffer' });
    try {
      await probe.open();
      await probe.close();
    } catch (error) {
      const refused = await openError(real, error);
      if (refused.code === 'CACHE_LOCKED') throw refused;
    }
    await options.beforeRepair?.();
    try {
      // `Level` is classic-level's class on Node, whose static `repair` its typings leave out.
      await (Level as unknown as { repair(location: string): Promise<void> }).repair(real);
      const db = new Level<Buffer, Buffer>(real, { keyEncoding: 'buffer', valueEncoding: 'buffer' });
      try {
        await rebuildBlobIndex(db);
        // Repair may keep a record and lose its meta entry, or the other way round: the sizes are counted again.
        await rebuildIndexes(db, { nowMs: Date.now(), recencyBucketMs: RECENCY_BUCKET_MS });
      } finally {
        await db.close();
      }
    } catch (error) {
      throw storageError(`Cannot repair the cache database in ${real}`, error);
    }
  } finally {
    await releaseDirectory(real);
  }
}

/**
 * Makes the `b` index name exactly the files that the records name. Repair may keep a record and lose its index
 * entry (they sort into different tables), and the sweep would then remove a file still in use. Entries are added
 * before stale ones go, so that at no moment does the index miss a file a record names.
 */
async function rebuildBlobIndex(db: Level<Buffer, Buffer>): Promise<void> {
  const named = new Map<string, string>();
  await inChunks(db.iterator(range(ITEM_PREFIX, '')), async (entries) => {
    const operations: { type: 'put'; key: Buffer; value: Buffer }[] = [];
    for (const [key, raw] of entries) {
      let name: string;
      try {
        const fields = decodeFields(raw);
        if (!fields.inFile) continue;
        name = decodePointer(fields.bytes).name;
      } catch {
        continue;
      }
      const index = withPrefix(BLOB_PREFIX, key);
      named.set(index.toString('latin1'), name);
      operations.push({ type: 'put', key: index, value: Buffer.from(name, 'latin1') });
    }
    if (operations.length > 0) await db.batch(operations);
  });
  await inChunks(db.iterator(range(BLOB_PREFIX, '')), async (entries) => {
    const stale = entries.filter(([key, name]) => named.get(key.toString('latin1')) !== name.toString('latin1'));
    if (stale.length > 0) await db.batch(stale.map(([key]) => ({ type: 'del' as const, key })));
  });
}
