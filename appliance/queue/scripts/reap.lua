--[[
  Housekeeping, at most once per interval across all callers: drop finished records whose TTL passed, and
  report expired leases and due retries (with their shapes) so the caller can requeue them per shape with
  requeue.lua. Cost is O(expired + due + cleaned), never O(active).

  Input:
    KEYS[1]  reaper lock  STRING (SET NX PX interval: the guard)
    KEYS[2]  leases       ZSET id -> deadline
    KEYS[3]  delayed      ZSET id -> retry due
    KEYS[4]  done         ZSET id -> record expiry
    KEYS[5]  dead         ZSET id -> time of death
    KEYS[6..15]  job columns: spec, meta, state, attempts, owner, progress, results, errors, info, cancels

    ARGV[1]  channel prefix  ARGV[2]  queue name
    ARGV[3]  events mode    ARGV[4]  events maxlen
    ARGV[5]  interval, ms   ARGV[6]  batch limit
    ARGV[7]  '1' to run even if another caller reaped within the interval

  Returns:
    nil when another caller holds this interval, else
    {records dropped, {expired id, shape, ...}, {due id, shape, ...}}
]]
local rcall = redis.call
-- @include now

local lock_key, leases_key, delayed_key, done_key, dead_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local meta_key = KEYS[7]
local now, limit = server_now(), tonumber(ARGV[6])

if ARGV[7] ~= '1' and not rcall('SET', lock_key, now, 'NX', 'PX', ARGV[5]) then
  return nil
end

local expired_records = rcall('ZRANGEBYSCORE', done_key, '-inf', now, 'LIMIT', 0, limit)
if #expired_records > 0 then
  for column = 6, 15 do
    rcall('HDEL', KEYS[column], unpack(expired_records))
  end
  rcall('ZREM', dead_key, unpack(expired_records))
  rcall('ZREM', done_key, unpack(expired_records))
end

local function with_shapes(ids)
  local out = {}
  for _, id in ipairs(ids) do
    local meta = rcall('HGET', meta_key, id)
    if meta then
      out[#out + 1] = id
      out[#out + 1] = string.match(meta, '^([^|]*)|')
    end
  end
  return out
end

local expired = rcall('ZRANGEBYSCORE', leases_key, '-inf', now, 'LIMIT', 0, limit)
local due = rcall('ZRANGEBYSCORE', delayed_key, '-inf', now, 'LIMIT', 0, limit)
return {#expired_records, with_shapes(expired), with_shapes(due)}
