--[[
  Write a repeating schedule: create it, replace it, pause or resume it (update), or remove it.
  The record and its place in the due index change together, so a housekeeper never sees one without the other.

  Input:
    KEYS[1]  schedules     HASH schedule id -> schedule (JSON)
    KEYS[2]  schedule_due  ZSET schedule id -> next tick, ms (absent while paused)

    ARGV[1]  schedule id
    ARGV[2]  mode: create | replace | update | remove
    ARGV[3]  schedule JSON (not for remove)
    ARGV[4]  next tick, ms; '' = paused (not for remove)

  Returns:
     1  written (remove: removed)
    -1  not found (update, remove)
    -4  duplicate: a schedule with this id exists (create)
]]
local rcall = redis.call
local records_key, due_key = KEYS[1], KEYS[2]
local id, mode = ARGV[1], ARGV[2]

local exists = rcall('HEXISTS', records_key, id) == 1
if mode == 'create' and exists then
  return -4
end
if (mode == 'update' or mode == 'remove') and not exists then
  return -1
end
if mode == 'remove' then
  rcall('HDEL', records_key, id)
  rcall('ZREM', due_key, id)
  return 1
end
rcall('HSET', records_key, id, ARGV[3])
if ARGV[4] == '' then
  rcall('ZREM', due_key, id)
else
  rcall('ZADD', due_key, ARGV[4], id)
end
return 1
