--[[
  Put one of a tenant's dead deliveries back in the outbox (`appliance webhooks retry-dead`), due now, its age
  counted afresh.

  Input:
    KEYS[1]  dead          ZSET id -> given up at, ms (the tenant's)
    KEYS[2]  dead_records  HASH id -> Delivery JSON
    KEYS[3]  outbox        HASH id -> Delivery JSON
    KEYS[4]  due           ZSET id -> next attempt, ms

    ARGV[1]  delivery id   ARGV[2]  Delivery JSON to queue

  Returns:
     1  queued again
    -1  not in this tenant's dead list
]]
local rcall = redis.call
-- @include now

local dead_key, records_key, outbox_key, due_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local id, record = ARGV[1], ARGV[2]

if not rcall('ZSCORE', dead_key, id) then return -1 end
rcall('ZREM', dead_key, id)
rcall('HDEL', records_key, id)
rcall('HSET', outbox_key, id, record)
rcall('ZADD', due_key, server_now(), id)
return 1
