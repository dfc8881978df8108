--[[
  A delivery attempt failed and the delivery is young enough to try again: record the attempt, due later.

  Input:
    KEYS[1]  owner   HASH id -> fencing token
    KEYS[2]  leases  ZSET id -> lease deadline, ms
    KEYS[3]  due     ZSET id -> next attempt, ms
    KEYS[4]  outbox  HASH id -> Delivery JSON

    ARGV[1]  delivery id   ARGV[2]  token   ARGV[3]  delay, ms   ARGV[4]  Delivery JSON (attempts, last error)

  Returns:
     1  scheduled
    -2  lease lost: nothing changed
]]
local rcall = redis.call
-- @include now

local owner_key, leases_key, due_key, outbox_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local id, token, delay, record = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]

if rcall('HGET', owner_key, id) ~= token then return -2 end
rcall('HDEL', owner_key, id)
rcall('ZREM', leases_key, id)
rcall('HSET', outbox_key, id, record)
rcall('ZADD', due_key, server_now() + delay, id)
return 1
