import { tierScript } from './tier-connection.js';

/**
 * The shared tier's Lua scripts (PROTOCOL.md's "Shared tier layout" describes the keys they touch). Each runs atomically
 * in Redis and touches only keys of one top-level scope, all passed in KEYS and under the scope's hash tag, so that it
 * runs on Redis Cluster too. Times are Redis's own (`TIME`), never a daemon's clock, except an item's expiry, which is
 * the value's. Every script that changes something logs the change (`XADD` to the scope's stream, trimmed to about
 * `maxLogEntries`) and announces it (`PUBLISH c|<top>|<stream id>|<key>`).
 */

/** Shared Lua helpers, prepended to each script. */
const HELPERS = `
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- The generations of the fields in ARGV[first .. first + count - 1], missing ones as 0, joined by '.'.
local function generations(gkey, first, count)
  if count == 0 then return '' end
  local fields = {}
  for i = 1, count do fields[i] = ARGV[first + i - 1] end
  local values = redis.call('HMGET', gkey, unpack(fields))
  for i = 1, count do values[i] = values[i] or '0' end
  return table.concat(values, '.')
end
-- A lease field: token|fence|expiresAtMs|generations.
local function parse_lease(text)
  if not text then return nil end
  local token, fence, expires, gens = string.match(text, '^(.-)|(%d+)|(%d+)|(.*)$')
  if not token then return nil end
  return { token = token, fence = tonumber(fence), expires = tonumber(expires), gens = gens }
end
local function log_change(ckey, max_entries, origin, kind, key, fence, channel, top)
  local id = redis.call('XADD', ckey, 'MAXLEN', '~', max_entries, '*', 'o', origin, 't', kind, 'k', key, 'f', fence)
  redis.call('PUBLISH', channel, 'c|' .. top .. '|' .. id .. '|' .. key)
  return id
end
`;

/**
 * Writes an item (`s`) or its tombstone (`d`), plain or fenced by a lease.
 *
 * KEYS: item, fence counter `n`, generations `g`, leases `l`, change log `c`.
 * ARGV: 1 origin, 2 item key, 3 channel, 4 top (percent-encoded), 5 maxLogEntries, 6 kind (`s` | `d`),
 * 7 lease token (`''`: plain), 8 lease fence, 9 count of generation fields, then the fields, then for `s`:
 * value bytes, encoding, modified, expiresAtMs (`''`: none), staleUntilMs (`''`: none), expire-at in ms (Unix time);
 * for `d`: the tombstone's time to live in ms.
 *
 * A plain write takes a new fence (`INCR n`) and ends the item's lease, if any (announcing the release, so that
 * waiters try again); a fenced one writes with its lease's fence, and is refused when the lease is missing (released,
 * or ended by a plain write), another's, expired by Redis's clock, granted under other generations (a clear came
 * since), or older than the item's fence (a plain write or delete came since).
 * Returns `{1, fence, stream id}`, or `{0, why}` when fenced.
 */
export const WRITE_SCRIPT = tierScript(
  'write',
  `${HELPERS}
local item, nkey, gkey, lkey, ckey = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local origin, ikey, channel, top, max_entries, kind = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local token = ARGV[7]
local count = tonumber(ARGV[9])
local gens = generations(gkey, 10, count)
local at = 10 + count
local fence
if token ~= '' then
  local lease = parse_lease(redis.call('HGET', lkey, ikey))
  if not lease then return {0, 'no lease'} end
  if lease.token ~= token or lease.fence ~= tonumber(ARGV[8]) then return {0, 'another lease'} end
  if lease.expires <= now_ms() then return {0, 'lease expired'} end
  if lease.gens ~= gens then return {0, 'scope cleared'} end
  local current = tonumber(redis.call('HGET', item, 'f') or '0')
  if current > lease.fence then return {0, 'newer write'} end
  fence = lease.fence
else
  fence = redis.call('INCR', nkey)
  -- A plain write supersedes a holder: its lease ends here (its write is refused, its renewal finds it lost, even
  -- once this write's item is gone), and its waiters are woken to try again.
  if redis.call('HDEL', lkey, ikey) == 1 then redis.call('PUBLISH', channel, 'r|' .. top .. '||' .. ikey) end
end
redis.call('DEL', item)
if kind == 's' then
  redis.call('HSET', item, 'v', ARGV[at], 'e', ARGV[at + 1], 'm', ARGV[at + 2], 'f', fence, 'g', gens)
  if ARGV[at + 3] ~= '' then redis.call('HSET', item, 'x', ARGV[at + 3]) end
  if ARGV[at + 4] ~= '' then redis.call('HSET', item, 's', ARGV[at + 4]) end
  redis.call('PEXPIREAT', item, ARGV[at + 5])
else
  redis.call('HSET', item, 'd', 1, 'f', fence)
  redis.call('PEXPIRE', item, ARGV[at])
end
return {1, fence, log_change(ckey, max_entries, origin, kind, ikey, fence, channel, top)}
`,
);

/**
 * Clears a scope: increments its generation field, so that every item written under the old generations reads as a
 * miss, without touching the items (they expire by their TTL).
 *
 * KEYS: fence counter `n`, generations `g`, change log `c`.
 * ARGV: 1 origin, 2 the scope's prefix (the generation field; `''` for all of the top-level scope's items), 3 channel,
 * 4 top (percent-encoded), 5 maxLogEntries.
 * Returns the stream id.
 */
export const CLEAR_SCRIPT = tierScript(
  'clear',
  `${HELPERS}
local nkey, gkey, ckey = KEYS[1], KEYS[2], KEYS[3]
redis.call('HINCRBY', gkey, ARGV[2], 1)
local fence = redis.call('INCR', nkey)
return log_change(ckey, ARGV[5], ARGV[1], 'c', ARGV[2], fence, ARGV[3], ARGV[4])
`,
);

/**
 * Takes an item's lease unless another daemon's is live. A lease of this daemon's own (its token begins with
 * `<origin>:`) is taken over: the daemon's local lock lets one handle at a time ask, so such a lease is one whose
 * release did not reach Redis.
 *
 * KEYS: item, fence counter `n`, generations `g`, leases `l`.
 * ARGV: 1 item key, 2 token, 3 leaseMs, 4 count of generation fields, then the fields, then the origin.
 * Returns `{0, remaining ms}` when busy; else `{1, fence, generations, the item's hash as field, value, ...}`.
 */
export const ACQUIRE_SCRIPT = tierScript(
  'acquire',
  `${HELPERS}
local item, nkey, gkey, lkey = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local ikey, token, lease_ms = ARGV[1], ARGV[2], tonumber(ARGV[3])
local count = tonumber(ARGV[4])
local origin = ARGV[5 + count] .. ':'
local now = now_ms()
local lease = parse_lease(redis.call('HGET', lkey, ikey))
if lease and lease.expires > now and string.sub(lease.token, 1, #origin) ~= origin then return {0, lease.expires - now} end
local fence = redis.call('INCR', nkey)
local gens = generations(gkey, 5, count)
redis.call('HSET', lkey, ikey, token .. '|' .. fence .. '|' .. (now + lease_ms) .. '|' .. gens)
local reply = {1, fence, gens}
local fields = redis.call('HGETALL', item)
for i = 1, #fields do reply[3 + i] = fields[i] end
return reply
`,
);

/**
 * Extends a lease by `leaseMs` from now, if it is still this holder's and live.
 *
 * KEYS: leases `l`. ARGV: 1 item key, 2 token, 3 fence, 4 leaseMs. Returns 1 if renewed, 0 if lost.
 */
export const RENEW_SCRIPT = tierScript(
  'renew',
  `${HELPERS}
local lkey = KEYS[1]
local ikey, token, fence, lease_ms = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local lease = parse_lease(redis.call('HGET', lkey, ikey))
local now = now_ms()
if not lease or lease.token ~= token or lease.fence ~= fence or lease.expires <= now then return 0 end
redis.call('HSET', lkey, ikey, token .. '|' .. fence .. '|' .. (now + lease_ms) .. '|' .. lease.gens)
return 1
`,
);

/**
 * Releases a lease if it is still this holder's (live or expired), and wakes the waiters (`PUBLISH r|<top>||<item key>`).
 *
 * KEYS: leases `l`. ARGV: 1 item key, 2 token, 3 fence, 4 channel, 5 top (percent-encoded). Returns 1 if released.
 */
export const RELEASE_SCRIPT = tierScript(
  'release',
  `${HELPERS}
local lkey = KEYS[1]
local ikey, token, fence = ARGV[1], ARGV[2], tonumber(ARGV[3])
local lease = parse_lease(redis.call('HGET', lkey, ikey))
if not lease or lease.token ~= token or lease.fence ~= fence then return 0 end
redis.call('HDEL', lkey, ikey)
redis.call('PUBLISH', ARGV[4], 'r|' .. ARGV[5] .. '||' .. ikey)
return 1
`,
);
