--[[
  Lease up to N due deliveries to one delivery worker. Deliveries whose lease ran out (their worker died or
  hung) are due again first: that is how a delivery survives the API process that was sending it.

  Input:
    KEYS[1]  due     ZSET id -> next attempt, ms
    KEYS[2]  leases  ZSET id -> lease deadline, ms
    KEYS[3]  owner   HASH id -> fencing token
    KEYS[4]  outbox  HASH id -> Delivery JSON

    ARGV[1]  token   ARGV[2]  lease, ms   ARGV[3]  N, the most deliveries to lease

  Returns: {now ms, id, Delivery JSON, id, Delivery JSON, ...} (no pairs when nothing is due)
]]
local rcall = redis.call
-- @include now

local due_key, leases_key, owner_key, outbox_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local token, lease_ms, count = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local now = server_now()

for _, id in ipairs(rcall('ZRANGEBYSCORE', leases_key, '-inf', now, 'LIMIT', 0, count)) do
  rcall('ZREM', leases_key, id)
  rcall('HDEL', owner_key, id)
  rcall('ZADD', due_key, now, id)
end

local out = {now}
for _, id in ipairs(rcall('ZRANGEBYSCORE', due_key, '-inf', now, 'LIMIT', 0, count)) do
  rcall('ZREM', due_key, id)
  local record = rcall('HGET', outbox_key, id)
  if record then
    rcall('ZADD', leases_key, now + lease_ms, id)
    rcall('HSET', owner_key, id, token)
    out[#out + 1] = id
    out[#out + 1] = record
  end
end
return out
