import { type Scope, topScopeName } from '../src/scope-path.js';

/**
 * The shared tier's key layout in Redis (PROTOCOL.md's "Shared tier layout" says it for other implementations).
 *
 * Every key of one top-level scope carries the same hash tag, `{<prefix>:<name>}` with the name percent-encoded, so that
 * one Lua script can check a lease, write the item and log the change atomically on Redis Cluster too; a top-level
 * scope therefore lives on one shard. Under the tag:
 * - `i:<item key>`: the item, a hash (`v` value bytes, `e` encoding, `m` modified, `x` expiresAtMs, `s` staleUntilMs,
 *   `f` fencing number, `g` the generations of its scopes when written; a tombstone has `d` and `f` only). It has a TTL
 *   (its stale time, or the tier's item TTL), so that a `volatile-*` eviction policy may evict it.
 * - `n`: the fencing counter (each next number the larger of it plus one and Redis's time in microseconds), `g`: a hash of the fence of each scope prefix's last clear, `t`: when each of those
 *   was set (a sorted set), `l`: a hash of leases by item key (`<token>|<fence>|<expiresAtMs>`), `x`: their expiries (a
 *   sorted set), `c`: the change log, a stream. None has a TTL: under a `volatile-*` policy Redis never evicts them.
 * Beside the tags: `<prefix>:id`, the tier's identity (a random string set once), `<prefix>:scopes`, a set of the
 * top-level scope names written to (what a clear of the root scope clears), and the Pub/Sub channel `<prefix>:changes`.
 */
export class TierKeys {
  readonly prefix: string;
  /** The channel on which every change logged and every lease released is announced. */
  readonly channel: string;
  readonly identity: string;
  readonly scopeNames: string;

  constructor(prefix: string) {
    this.prefix = prefix;
    this.channel = `${prefix}:changes`;
    this.identity = `${prefix}:id`;
    this.scopeNames = `${prefix}:scopes`;
  }

  /** The hash tag of the top-level scope named `top` (`''`: items of the root scope). */
  tag(top: string): string {
    return `{${this.prefix}:${encodeTopName(top)}}`;
  }

  /** The item key's Redis key (`itemKey` from `scope-path.ts`). */
  item(itemKey: string): string {
    return `${this.tag(topScopeName(itemKey))}i:${itemKey}`;
  }

  fenceCounter(top: string): string {
    return `${this.tag(top)}n`;
  }

  generations(top: string): string {
    return `${this.tag(top)}g`;
  }

  leases(top: string): string {
    return `${this.tag(top)}l`;
  }

  /** The leases' expiry index: a sorted set of item keys by their lease's expiresAtMs, so that scripts prune dead leases. */
  leaseExpiries(top: string): string {
    return `${this.tag(top)}x`;
  }

  /** When each generation field was last set: a sorted set of scope prefixes by Redis time (ms), so that clears prune old ones. */
  clearTimes(top: string): string {
    return `${this.tag(top)}t`;
  }

  changeLog(top: string): string {
    return `${this.tag(top)}c`;
  }
}

/**
 * The generation fields an item of `scope` depends on: the root's (`''`) and each enclosing scope's prefix, outermost
 * first. A clear of a scope sets its prefix's field in the top-level scope's `g` hash to a new fence; an item whose
 * fence is not above every one of its fields reads as a miss.
 */
export function generationFields(scope: Scope): string[] {
  const fields = [''];
  let prefix = '';
  // The scope's prefix is each name escaped and followed by `/`, so cutting it after each `/` gives every ancestor's.
  for (let at = scope.prefix.indexOf('/'); at >= 0; at = scope.prefix.indexOf('/', at + 1)) {
    prefix = scope.prefix.slice(0, at + 1);
    fields.push(prefix);
  }
  return fields;
}

/** The top-level scope name of a scope; `''` for the root scope. */
export function topOf(scope: Scope): string {
  return scope.path[0] ?? '';
}

/**
 * One Pub/Sub message on {@link TierKeys.channel}: `c|<top>|<stream id>|<item key or scope prefix>` when a change was
 * logged, `r|<top>||<item key>` when a lease was released (`<top>` as {@link encodeTopName} writes it).
 */
export interface TierMessage {
  readonly kind: 'changed' | 'released';
  readonly top: string;
  readonly streamId: string;
  readonly key: string;
}

export function parseTierMessage(text: string): TierMessage | undefined {
  const [kind, top, streamId, ...rest] = text.split('|');
  if ((kind !== 'c' && kind !== 'r') || top === undefined || streamId === undefined || rest.length === 0) return undefined;
  try {
    return { kind: kind === 'c' ? 'changed' : 'released', top: decodeTopName(top), streamId, key: rest.join('|') };
  } catch {
    return undefined;
  }
}

const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/g;
const SURROGATE_ESCAPE = /(%u[0-9A-F]{4})/;

/**
 * A top-level scope's name as tags and messages carry it: percent-encoded as `encodeURIComponent` does, and each lone
 * UTF-16 surrogate (which that refuses, and which a scope name may hold) as `%uXXXX`, which it never writes.
 */
export function encodeTopName(top: string): string {
  let encoded = '';
  let from = 0;
  for (const lone of top.matchAll(LONE_SURROGATE)) {
    encoded += `${encodeURIComponent(top.slice(from, lone.index))}%u${lone[0].charCodeAt(0).toString(16).toUpperCase()}`;
    from = lone.index + 1;
  }
  return encoded + encodeURIComponent(top.slice(from));
}

/** The name {@link encodeTopName} encoded. @throws URIError when `text` is not such an encoding. */
export function decodeTopName(text: string): string {
  return text
    .split(SURROGATE_ESCAPE)
    .map((part, at) => (at % 2 === 1 ? String.fromCharCode(parseInt(part.slice(2), 16)) : decodeURIComponent(part)))
    .join('');
}
