--[[
  Move a schedule past the ticks a housekeeper has just submitted, if no one else has moved it meanwhile
  (compare and set). Two housekeepers that read the same due tick both submit its job, under the same job id,
  so Redis keeps one; only the first of them moves the schedule on.

  Input:
    KEYS[1]  schedule_due  ZSET schedule id -> next tick, ms

    ARGV[1]  schedule id
    ARGV[2]  the tick the caller read, ms
    ARGV[3]  the next tick, ms; '' = the schedule has no more ticks (it leaves the due index)

  Returns:
     1  moved on
    -2  stale (as a lost lease): someone else moved it, or it was paused or removed meanwhile
]]
local rcall = redis.call
local due_key, id = KEYS[1], ARGV[1]

local current = rcall('ZSCORE', due_key, id)
if not current or tonumber(current) ~= tonumber(ARGV[2]) then
  return -2
end
if ARGV[3] == '' then
  rcall('ZREM', due_key, id)
else
  rcall('ZADD', due_key, ARGV[3], id)
end
return 1
