--[[
  Housekeeping, at most once per interval across all callers: drop finished records whose TTL passed, and
  report expired leases and due retries (with their shapes) so the caller can requeue them per shape with
  requeue.lua, and how long until more falls due. Cost is O(expired + due + cleaned + log N), never O(active).

  Input:
    KEYS[1]  reaper_lock  STRING (SET NX PX interval: the guard)
    KEYS[2]  leases       ZSET id -> deadline
    KEYS[3]  delayed      ZSET id -> retry due
    KEYS[4]  done         ZSET id -> record expiry
    KEYS[5]  dead         ZSET id -> time of death
    KEYS[6]  spec         \
    KEYS[7]  meta          |
    KEYS[8]  state         |
    KEYS[9]  attempts      |
    KEYS[10] owner         | the job columns: every per-job HASH, from which a dropped record goes
    KEYS[11] progress      |
    KEYS[12] results       |
    KEYS[13] errors        |
    KEYS[14] info          |
    KEYS[15] cancels       |
    KEYS[16] customer      |
    KEYS[17] parents      /

    (no common prefix: nothing here publishes or emits)
    ARGV[1]  interval, ms   ARGV[2]  batch limit
    ARGV[3]  '1' to run even if another caller reaped within the interval

  Returns:
    {-1, {}, {}, wait ms} when another caller holds this interval, else
    {records dropped, {expired id, shape, ...}, {due id, shape, ...}, wait ms}
    where wait ms = how long until the next call has work: until the earliest lease deadline or retry due time
    not listed here, and not before the interval's guard frees; -1 when nothing is leased or delayed. The
    callers sleep that long instead of polling (finished records' expiry does not count: it is not urgent).
]]
local rcall = redis.call
-- @include now

local lock_key, leases_key, delayed_key, done_key, dead_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local meta_key = KEYS[7]
local now, limit = server_now(), tonumber(ARGV[2])

-- The earliest score of a ZSET after `after` (exclusive; '-inf' for any), or nil.
local function first_after(key, after)
  local first = rcall('ZRANGEBYSCORE', key, after, '+inf', 'LIMIT', 0, 1, 'WITHSCORES')
  return first[2] and tonumber(first[2]) or nil
end

-- ms until the earliest of the given times, not before the guard frees; -1 when there is no time.
local function wait_ms(a, b)
  local next_at = a
  if b and (not next_at or b < next_at) then next_at = b end
  if not next_at then return -1 end
  local guard = rcall('PTTL', lock_key)
  return math.max(next_at - now, guard, 0)
end

if ARGV[3] ~= '1' and not rcall('SET', lock_key, now, 'NX', 'PX', ARGV[1]) then
  -- The holder of this interval handles what is due now; anything already past its time counts (a holder
  -- that died between here and requeue.lua leaves it to the next caller once the guard frees).
  return {-1, {}, {}, wait_ms(first_after(leases_key, '-inf'), first_after(delayed_key, '-inf'))}
end

local expired_records = rcall('ZRANGEBYSCORE', done_key, '-inf', now, 'LIMIT', 0, limit)
if #expired_records > 0 then
  for column = 6, 17 do
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
local wait
if #expired == limit or #due == limit or #expired_records == limit then
  wait = wait_ms(now, nil)  -- more is due than one call takes: come back as soon as the guard frees
else
  -- What this call lists goes back in line through requeue.lua; the next work is what falls due after now.
  local after = '(' .. now
  wait = wait_ms(first_after(leases_key, after), first_after(delayed_key, after))
end
return {#expired_records, with_shapes(expired), with_shapes(due), wait}
