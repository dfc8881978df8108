--[[
  Functions the API's scripts share (rate.lua, inflight.lua, submit_one.lua): each names them with one
  `-- @admission` line, which appliance/api/scripts.py replaces with this file. Keys are the callers' KEYS.

  count_request(rate_key) -> count in the key's current one-second window, ms until the window ends
  admit(inflight_key, state_key, limit, ids) -> true, count after admitting; or false, count of unfinished jobs.
    The set holds the ids the key submitted that may still run; only when the new ones would not fit are the
    finished (or expired) ones dropped from it, so an admission is one ZCARD while the key is under its limit.
]]
local function count_request(rate_key)
  local n = redis.call('INCR', rate_key)
  local ttl = redis.call('PTTL', rate_key)
  if ttl < 0 then
    redis.call('PEXPIRE', rate_key, 1000)
    ttl = 1000
  end
  return n, ttl
end

local function admit(inflight_key, state_key, limit, ids)
  local n = redis.call('ZCARD', inflight_key)
  if n + #ids > limit then
    local finished = {completed = true, failed = true, cancelled = true, dead = true}
    local members = redis.call('ZRANGE', inflight_key, 0, -1)
    for start = 1, #members, 500 do
      local chunk = {unpack(members, start, math.min(start + 499, #members))}
      local states = redis.call('HMGET', state_key, unpack(chunk))
      for i, member in ipairs(chunk) do
        if not states[i] or finished[states[i]] then redis.call('ZREM', inflight_key, member) end
      end
    end
    n = redis.call('ZCARD', inflight_key)
    if n + #ids > limit then return false, n end
  end
  for _, id in ipairs(ids) do redis.call('ZADD', inflight_key, 0, id) end
  return true, n + #ids
end
