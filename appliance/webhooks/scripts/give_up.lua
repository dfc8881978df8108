--[[
  A delivery failed past webhooks.max_age_s: it moves from the outbox to its tenant's dead list, which keeps
  the newest `keep` entries.

  Input:
    KEYS[1]  owner         HASH id -> fencing token
    KEYS[2]  leases        ZSET id -> lease deadline, ms
    KEYS[3]  outbox        HASH id -> Delivery JSON
    KEYS[4]  dead          ZSET id -> given up at, ms (the delivery's tenant's)
    KEYS[5]  dead_records  HASH id -> Delivery JSON

    ARGV[1]  delivery id   ARGV[2]  token   ARGV[3]  Delivery JSON (last attempt)   ARGV[4]  keep

  Returns:
     1  given up
    -2  lease lost: nothing changed
]]
local rcall = redis.call
-- @include now

local owner_key, leases_key, outbox_key, dead_key, records_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local id, token, record, keep = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])

if rcall('HGET', owner_key, id) ~= token then return -2 end
rcall('HDEL', owner_key, id)
rcall('ZREM', leases_key, id)
rcall('HDEL', outbox_key, id)
rcall('HSET', records_key, id, record)
rcall('ZADD', dead_key, server_now(), id)
local excess = rcall('ZCARD', dead_key) - keep
if excess > 0 then
  for _, old in ipairs(rcall('ZRANGE', dead_key, 0, excess - 1)) do
    rcall('ZREM', dead_key, old)
    rcall('HDEL', records_key, old)
  end
end
return 1
