--[[
  A delivery was answered 2xx: it leaves the outbox.

  Input:
    KEYS[1]  owner   HASH id -> fencing token
    KEYS[2]  leases  ZSET id -> lease deadline, ms
    KEYS[3]  outbox  HASH id -> Delivery JSON

    ARGV[1]  delivery id   ARGV[2]  token

  Returns:
     1  done
    -2  lease lost: another worker leased it since (it may send it again: receivers de-duplicate)
]]
local rcall = redis.call
local owner_key, leases_key, outbox_key = KEYS[1], KEYS[2], KEYS[3]
local id, token = ARGV[1], ARGV[2]

if rcall('HGET', owner_key, id) ~= token then return -2 end
rcall('HDEL', owner_key, id)
rcall('ZREM', leases_key, id)
rcall('HDEL', outbox_key, id)
return 1
