--[[
  Queue one delivery in the outbox (once: a delivery id already there is left as it is), and end the job's
  registration when this is its terminal event, in the same step, so the feed never queues that event twice.

  Input:
    KEYS[1]  outbox  HASH id -> Delivery JSON
    KEYS[2]  due     ZSET id -> next attempt, ms
    KEYS[3]  hooks   HASH job id -> registration JSON

    ARGV[1]  delivery id   ARGV[2]  Delivery JSON
    ARGV[3]  job id whose registration ends ('' for a progress event)

  Returns:
     1  queued
     0  already in the outbox: nothing changed
]]
local rcall = redis.call
-- @include now

local outbox_key, due_key, hooks_key = KEYS[1], KEYS[2], KEYS[3]
local id, record, ending = ARGV[1], ARGV[2], ARGV[3]

if ending ~= '' then rcall('HDEL', hooks_key, ending) end
if rcall('HSETNX', outbox_key, id, record) == 0 then return 0 end
rcall('ZADD', due_key, server_now(), id)
return 1
