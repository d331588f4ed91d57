import { randomUUID } from 'node:crypto';
import type { TierConnection } from './tier-connection.js';
import type { TierKeys } from './tier-keys.js';

/**
 * Reads the tier's identity (`<prefix>:id`), setting it to a new random one when there is none (a new Redis, or one
 * that lost its data): numbers and positions kept against one identity mean nothing against another. Resolves to
 * `null` for a Redis user who may not read or set it (an ACL): the identity is unknown then.
 * @throws TierUnavailable when Redis does not answer.
 */
export async function readTierIdentity(connection: Pick<TierConnection, 'run'>, keys: TierKeys): Promise<string | null> {
  const candidate = randomUUID();
  const key = keys.identity;
  return connection.run('tier identity', async (client) => {
    try {
      const found = await client.send<string | null>(key, ['GET', key], { readonly: true });
      if (found !== null) return String(found);
      const before = await client.send<string | null>(key, ['SET', key, candidate, 'NX', 'GET']);
      return before === null ? candidate : String(before);
    } catch (error) {
      if (error instanceof Error && /^NOPERM/.test(error.message)) return null;
      throw error;
    }
  });
}
