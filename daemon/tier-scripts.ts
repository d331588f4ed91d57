import { tierScript } from './tier-connection.js';

/**
 * The shared tier's Lua scripts (PROTOCOL.md's "Shared tier layout" describes the keys they touch). Each runs atomically
 * in Redis and touches only keys of one top-level scope, all passed in KEYS and under the scope's hash tag, so that it
 * runs on Redis Cluster too. Times are Redis's own (`TIME`), never a daemon's clock, except an item's expiry, which is
 * the value's. Every script that changes something logs the change (`XADD` to the scope's stream, trimmed to about
 * `maxLogEntries`) and announces it (`PUBLISH c|<top>|<stream id>|<key>`).
 */

/**
 * The longest a shared copy lives in Redis after the write that made it: its TTL is never set past this (by Redis's
 * clock). It also bounds a clear's record in `g`: once this has passed since the clear, every item written before it
 * has expired, so the record can go.
 */
export const SHARED_ITEM_MAX_LIFE_MS = 30 * 24 * 60 * 60 * 1000;
/** A clear's record is pruned this long after the clear: the items' longest life, and a day for Redis's clock to step. */
export const CLEAR_RECORD_LIFE_MS = SHARED_ITEM_MAX_LIFE_MS + 24 * 60 * 60 * 1000;
/** How many dead entries (expired leases, clear records past their life) a script call removes at most. */
export const PRUNE_PER_CALL = 10;

/** Shared Lua helpers, prepended to each script. */
const HELPERS = `
local PRUNE_PER_CALL = ${PRUNE_PER_CALL}
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- The scope's next fencing number: one above the counter, and never below Redis's time in microseconds (seconds, then
-- the microseconds as six digits; below 2^53, exact in Lua, until the year 2255). A counter lost (a new scope, a Redis or
-- Cluster shard that restarted empty) or gone back (a failover to a replica that lagged, a restore of an older copy)
-- thus still hands out numbers above every one it handed out before, unless it handed out more than one a microsecond
-- or Redis's clock went back, so a number kept from before is older than any write, lease or clear made since.
local function next_fence(nkey)
  local t = redis.call('TIME')
  local fence = math.max(tonumber(redis.call('GET', nkey) or '0') + 1, tonumber(t[1]) * 1000000 + tonumber(t[2]))
  redis.call('SET', nkey, string.format('%.0f', fence))
  return fence
end
-- The newest clear among the generation fields in ARGV[first .. first + count - 1]: the largest fence any of them
-- holds in g, 0 when none does. An item (or a lease) is valid only if its fence is greater.
local function cleared_at(gkey, first, count)
  if count == 0 then return 0 end
  local fields = {}
  for i = 1, count do fields[i] = ARGV[first + i - 1] end
  local values = redis.call('HMGET', gkey, unpack(fields))
  local newest = 0
  for i = 1, count do
    local value = tonumber(values[i] or '0')
    if value > newest then newest = value end
  end
  return newest
end
-- A lease field: token|fence|expiresAtMs. Numbers are written in full: Lua's own conversion keeps 14 digits only.
local function lease_field(token, fence, expires)
  return token .. '|' .. string.format('%.0f', fence) .. '|' .. string.format('%.0f', expires)
end
local function parse_lease(text)
  if not text then return nil end
  local token, fence, expires = string.match(text, '^(.-)|(%d+)|(%d+)$')
  if not token then return nil end
  return { token = token, fence = tonumber(fence), expires = tonumber(expires) }
end
-- Removes up to PRUNE_PER_CALL leases that expired by now, as the expiry index x (score: expiresAtMs) lists them.
local function prune_leases(lkey, xkey, now)
  local dead = redis.call('ZRANGEBYSCORE', xkey, '-inf', now, 'LIMIT', 0, PRUNE_PER_CALL)
  for i = 1, #dead do
    local lease = parse_lease(redis.call('HGET', lkey, dead[i]))
    if lease and lease.expires > now then
      redis.call('ZADD', xkey, lease.expires, dead[i])
    else
      redis.call('HDEL', lkey, dead[i])
      redis.call('ZREM', xkey, dead[i])
    end
  end
end
local function log_change(ckey, max_entries, origin, kind, key, fence, channel, top)
  local id = redis.call('XADD', ckey, 'MAXLEN', '~', max_entries, '*', 'o', origin, 't', kind, 'k', key, 'f', fence)
  redis.call('PUBLISH', channel, 'c|' .. top .. '|' .. id .. '|' .. key)
  return id
end
`;

/**
 * Writes an item (`s`) or its tombstone (`d`): plain, fenced by a lease, or fenced by a number.
 *
 * KEYS: item, fence counter `n`, generations `g`, leases `l`, change log `c`, lease expiries `x`.
 * ARGV: 1 origin, 2 item key, 3 channel, 4 top (percent-encoded), 5 maxLogEntries, 6 kind (`s` | `d`),
 * 7 lease token (`''`: none), 8 the lease's fence, or with no token the fence to write by (`''`: plain), 9 count of generation fields, then the fields, then for `s`:
 * value bytes, encoding, modified, expiresAtMs (`''`: none), staleUntilMs (`''`: none), expire-at in ms (Unix time,
 * capped at {@link SHARED_ITEM_MAX_LIFE_MS} from now); for `d`: the tombstone's time to live in ms.
 *
 * A plain write takes a new fence (`next_fence`) and ends the item's lease, if any (announcing the release, so that
 * waiters try again); a fenced one writes with its lease's fence, and is refused when the lease is missing (released,
 * or ended by a plain write), another's, expired by Redis's clock, older than a clear of one of the item's scopes, or
 * older than the item's fence (a plain write or delete came since). One fenced by a number (the write-through of a
lease's write that Redis did not take, or an item of a scope written through whole, fenced by that scope's clear) is
refused when the item's fence is newer, a clear of one of its scopes came since, or another lease of a newer fence is
live; else it writes with that fence, or with a new one when the fence is the newest clear's (an item is valid only
above it); it ends a lease of its fence or older, as a plain write does. A number above the scope's fencing counter
(kept from before Redis lost its data) is taken as 0: the write goes, with a new number, only when the item has no
hash, no live lease and no clear of its scopes. Then it prunes a few expired leases.
 * Returns `{1, fence, stream id}`, or `{0, why}` when fenced.
 */
export const WRITE_SCRIPT = tierScript(
  'write',
  `${HELPERS}
local item, nkey, gkey, lkey, ckey, xkey = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local origin, ikey, channel, top, max_entries, kind = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local token = ARGV[7]
local count = tonumber(ARGV[9])
local at = 10 + count
local now = now_ms()
local fence = tonumber(ARGV[8])
-- A number above the counter was handed out by this Redis before it lost its data (the counter only grows): it goes as
-- fenced by 0, written only when nothing of the item came since the loss.
if token == '' and fence and fence > tonumber(redis.call('GET', nkey) or '0') then fence = 0 end
local lease = parse_lease(redis.call('HGET', lkey, ikey))
if token ~= '' then
  if not lease then return {0, 'no lease'} end
  if lease.token ~= token or lease.fence ~= fence then return {0, 'another lease'} end
  if lease.expires <= now then return {0, 'lease expired'} end
elseif fence and lease and lease.expires > now and lease.fence > fence then
  return {0, 'newer lease'}
end
local fresh = not fence
if fence then
  local cleared = cleared_at(gkey, 10, count)
  if cleared > fence then return {0, 'scope cleared'} end
  if tonumber(redis.call('HGET', item, 'f') or '0') > fence then return {0, 'newer write'} end
  -- Fenced by a clear (fences are unique: only a clear's can equal it): written after it, with a fence above it.
  if token == '' and cleared == fence then fresh = true end
end
if token == '' then
  if fresh then fence = next_fence(nkey) end
  -- A plain write (or one fenced by a number, past the checks) supersedes a holder: its lease ends here (its write is
  -- refused, its renewal finds it lost, even once this write's item is gone), and its waiters are woken to try again.
  if redis.call('HDEL', lkey, ikey) == 1 then
    redis.call('ZREM', xkey, ikey)
    redis.call('PUBLISH', channel, 'r|' .. top .. '||' .. ikey)
  end
end
redis.call('DEL', item)
if kind == 's' then
  redis.call('HSET', item, 'v', ARGV[at], 'e', ARGV[at + 1], 'm', ARGV[at + 2], 'f', fence)
  if ARGV[at + 3] ~= '' then redis.call('HSET', item, 'x', ARGV[at + 3]) end
  if ARGV[at + 4] ~= '' then redis.call('HSET', item, 's', ARGV[at + 4]) end
  redis.call('PEXPIREAT', item, math.min(tonumber(ARGV[at + 5]), now + ${SHARED_ITEM_MAX_LIFE_MS}))
else
  redis.call('HSET', item, 'd', 1, 'f', fence)
  redis.call('PEXPIRE', item, ARGV[at])
end
prune_leases(lkey, xkey, now)
return {1, fence, log_change(ckey, max_entries, origin, kind, ikey, fence, channel, top)}
`,
);

/**
 * Clears a scope: records a new fence as its generation, so that every item of the scope written before reads as a
 * miss, without touching the items (they expire by their TTL). A clear of the root scope's items (prefix `''`) or of a
 * top-level scope (its own prefix) removes the records of every scope under it, which it makes redundant; any clear
 * removes up to {@link PRUNE_PER_CALL} records older than {@link CLEAR_RECORD_LIFE_MS}, which no live item predates.
 *
 * KEYS: fence counter `n`, generations `g`, clear times `t`, change log `c`.
 * ARGV: 1 origin, 2 the scope's prefix (the generation field; `''` for all of the top-level scope's items), 3 channel,
 * 4 top (percent-encoded), 5 maxLogEntries, 6 `1` when the prefix is `''` or the top-level scope's own (every other
 * record is under it), else `0`.
 * Returns `{fence, stream id}`: the fence the clear stands at (what a write fenced by it must not be older than).
 */
export const CLEAR_SCRIPT = tierScript(
  'clear',
  `${HELPERS}
local nkey, gkey, tkey, ckey = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local prefix = ARGV[2]
local fence = next_fence(nkey)
local now = now_ms()
if ARGV[6] == '1' then
  -- Every other record is the prefix's descendant, and older: only the root's ('') is kept, unless it is the one cleared.
  local root, root_time = redis.call('HGET', gkey, ''), redis.call('ZSCORE', tkey, '')
  redis.call('DEL', gkey, tkey)
  if prefix ~= '' and root then
    redis.call('HSET', gkey, '', root)
    -- A root record with no time (partly lost state) gets now's: a Lua error here would leave the records dropped.
    redis.call('ZADD', tkey, root_time or now, '')
  end
end
redis.call('HSET', gkey, prefix, fence)
redis.call('ZADD', tkey, now, prefix)
local old = redis.call('ZRANGEBYSCORE', tkey, '-inf', now - ${CLEAR_RECORD_LIFE_MS}, 'LIMIT', 0, PRUNE_PER_CALL)
for i = 1, #old do
  redis.call('HDEL', gkey, old[i])
  redis.call('ZREM', tkey, old[i])
end
return {fence, log_change(ckey, ARGV[5], ARGV[1], 'c', prefix, fence, ARGV[3], ARGV[4])}
`,
);

/**
 * Takes an item's lease unless another daemon's is live. A lease of this daemon's own (its token begins with
 * `<origin>:`) is taken over: the daemon's local lock lets one handle at a time ask, so such a lease is one whose
 * release did not reach Redis. Prunes a few expired leases first.
 *
 * KEYS: item, fence counter `n`, generations `g`, leases `l`, lease expiries `x`.
 * ARGV: 1 item key, 2 token, 3 leaseMs, 4 count of generation fields, then the fields, then the origin.
 * Returns `{0, remaining ms}` when busy; else `{1, fence, newest clear, the item's hash as field, value, ...}`.
 */
export const ACQUIRE_SCRIPT = tierScript(
  'acquire',
  `${HELPERS}
local item, nkey, gkey, lkey, xkey = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local ikey, token, lease_ms = ARGV[1], ARGV[2], tonumber(ARGV[3])
local count = tonumber(ARGV[4])
local origin = ARGV[5 + count] .. ':'
local now = now_ms()
prune_leases(lkey, xkey, now)
local lease = parse_lease(redis.call('HGET', lkey, ikey))
if lease and lease.expires > now and string.sub(lease.token, 1, #origin) ~= origin then return {0, lease.expires - now} end
local fence = next_fence(nkey)
redis.call('HSET', lkey, ikey, lease_field(token, fence, now + lease_ms))
redis.call('ZADD', xkey, now + lease_ms, ikey)
local reply = {1, fence, cleared_at(gkey, 5, count)}
local fields = redis.call('HGETALL', item)
for i = 1, #fields do reply[3 + i] = fields[i] end
return reply
`,
);

/**
 * Extends a lease by `leaseMs` from now, if it is still this holder's, live, and granted after the last clear of the
 * item's scopes (a lease older than a clear is lost: its write would be refused).
 *
 * KEYS: leases `l`, lease expiries `x`, generations `g`. ARGV: 1 item key, 2 token, 3 fence, 4 leaseMs, 5 count of
 * generation fields, then the fields. Returns 1 if renewed, 0 if lost.
 */
export const RENEW_SCRIPT = tierScript(
  'renew',
  `${HELPERS}
local lkey, xkey, gkey = KEYS[1], KEYS[2], KEYS[3]
local ikey, token, fence, lease_ms = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local lease = parse_lease(redis.call('HGET', lkey, ikey))
local now = now_ms()
if not lease or lease.token ~= token or lease.fence ~= fence or lease.expires <= now then return 0 end
if cleared_at(gkey, 6, tonumber(ARGV[5])) > fence then return 0 end
redis.call('HSET', lkey, ikey, lease_field(token, fence, now + lease_ms))
redis.call('ZADD', xkey, now + lease_ms, ikey)
return 1
`,
);

/**
 * Releases a lease if it is still this holder's (live or expired), and wakes the waiters (`PUBLISH r|<top>||<item key>`);
 * prunes a few expired leases either way.
 *
 * KEYS: leases `l`, lease expiries `x`. ARGV: 1 item key, 2 token, 3 fence (`''`: any, for a grant whose reply never
 * came: tokens are never reused), 4 channel, 5 top (percent-encoded).
 * Returns 1 if released.
 */
export const RELEASE_SCRIPT = tierScript(
  'release',
  `${HELPERS}
local lkey, xkey = KEYS[1], KEYS[2]
local ikey, token, fence = ARGV[1], ARGV[2], tonumber(ARGV[3])
local lease = parse_lease(redis.call('HGET', lkey, ikey))
local released = 0
if lease and lease.token == token and (ARGV[3] == '' or lease.fence == fence) then
  redis.call('HDEL', lkey, ikey)
  redis.call('ZREM', xkey, ikey)
  redis.call('PUBLISH', ARGV[4], 'r|' .. ARGV[5] .. '||' .. ikey)
  released = 1
end
prune_leases(lkey, xkey, now_ms())
return released
`,
);

/** Every script, loaded at connect. */
export const TIER_SCRIPTS = [WRITE_SCRIPT, CLEAR_SCRIPT, ACQUIRE_SCRIPT, RENEW_SCRIPT, RELEASE_SCRIPT] as const;
