--[[
  What a housekeeper should materialise now: the schedules whose next tick has come, by the server's clock.

  Input:
    KEYS[1]  schedule_due  ZSET schedule id -> next tick, ms

    ARGV[1]  at most this many schedules
    ARGV[2]  the time to use, ms; '' = the server's clock (tests pass a controlled clock)

  Returns:
    {now ms, ms until the earliest tick not yet due (-1: none), id1, tick1, id2, tick2, ...}
]]
local rcall = redis.call
-- @include now

local due_key = KEYS[1]
local now = tonumber(ARGV[2]) or server_now()
local due = rcall('ZRANGE', due_key, '-inf', now, 'BYSCORE', 'LIMIT', 0, tonumber(ARGV[1]), 'WITHSCORES')
local later = rcall('ZRANGE', due_key, '(' .. now, '+inf', 'BYSCORE', 'LIMIT', 0, 1, 'WITHSCORES')
local wait = -1
if later[2] then
  wait = tonumber(later[2]) - now
end
local out = {now, wait}
for i = 1, #due do
  out[#out + 1] = due[i]
end
return out
