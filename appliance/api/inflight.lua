--[[
  Admit jobs of an API key against its limit of unfinished jobs. The key's set holds the ids it submitted that
  may still run; only when the new ones would not fit are the finished (or expired) ones dropped from it, so an
  admission is one ZCARD while the key is under its limit.

  Input:
    KEYS[1]  inflight  ZSET of the key's submitted job ids (score unused)
    KEYS[2]  state     HASH id -> status (the queue's)
    ARGV[1]  the key's limit
    ARGV[2..] ids of the jobs to admit

  Returns: {1, count after admitting} or {0, count of unfinished jobs} when they do not fit
]]
local limit, want = tonumber(ARGV[1]), #ARGV - 1
local n = redis.call('ZCARD', KEYS[1])
if n + want > limit then
  local finished = {completed = true, failed = true, cancelled = true, dead = true}
  local members = redis.call('ZRANGE', KEYS[1], 0, -1)
  for start = 1, #members, 500 do
    local chunk = {unpack(members, start, math.min(start + 499, #members))}
    local states = redis.call('HMGET', KEYS[2], unpack(chunk))
    for i, id in ipairs(chunk) do
      if not states[i] or finished[states[i]] then redis.call('ZREM', KEYS[1], id) end
    end
  end
  n = redis.call('ZCARD', KEYS[1])
  if n + want > limit then return {0, n} end
end
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], 0, ARGV[i]) end
return {1, n + want}
