--[[
  Count one request of an API key against its per-second limit (a one-second window shared by every API
  process, since the count lives in Redis).

  Input:
    KEYS[1]  rate  STRING request count of the key's current window (expires with the window)
    ARGV[1]  requests allowed per window

  Returns: {1, 0} admitted, or {0, ms until the window ends} refused
]]
local n = redis.call('INCR', KEYS[1])
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], 1000)
  ttl = 1000
end
if n > tonumber(ARGV[1]) then return {0, ttl} end
return {1, 0}
