--[[
  Renew every lease a worker holds in one call, mark the worker (and the shapes it serves) alive.

  A lease whose deadline passed but which nobody took over yet is still renewed: the token proves nobody did.

  Input:
    KEYS[1]  owner         HASH id -> token|worker|claimed_ms
    KEYS[2]  leases        ZSET id -> deadline, ms
    KEYS[3]  cancels       HASH id -> cancel request time
    KEYS[4]  workers_seen  ZSET worker -> last heartbeat, ms
    KEYS[5]  shape_live    HASH shape -> last time a matching worker was alive, ms

    (no common prefix: nothing here publishes or emits)
    ARGV[1]  worker id       ARGV[2]  lease, ms
    ARGV[3]  K = number of shapes that follow
    ARGV[4..3+K]  shape ids the worker serves
    ARGV[4+K..]   job id, token, job id, token, ...

  Returns: one code per job, in order:
     1  renewed
     2  renewed, and cancellation was requested: stop the work
    -2  lease lost: another worker owns the job or it finished; do not write its outcome
]]
local rcall = redis.call
-- @include now
-- @include owner

local owner_key, leases_key, cancels_key, seen_key, live_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local now, worker, lease_ms, nshapes = server_now(), ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])

rcall('ZADD', seen_key, now, worker)
if nshapes > 0 then
  local pairs_ = {}
  for i = 4, 3 + nshapes do
    pairs_[#pairs_ + 1] = ARGV[i]
    pairs_[#pairs_ + 1] = now
  end
  rcall('HSET', live_key, unpack(pairs_))
end

-- One read of the leases and (while any cancellation is pending) of the cancel requests, one write of the
-- renewed deadlines: three or four commands for any number of leases.
local ids, tokens, out = {}, {}, {}
for i = 4 + nshapes, #ARGV - 1, 2 do
  ids[#ids + 1], tokens[#tokens + 1] = ARGV[i], ARGV[i + 1]
end
if #ids == 0 then return out end
local owners = rcall('HMGET', owner_key, unpack(ids))
local cancels = {}
if rcall('EXISTS', cancels_key) == 1 then cancels = rcall('HMGET', cancels_key, unpack(ids)) end
local renewed = {}
for i, id in ipairs(ids) do
  if parse_lease(owners[i], tokens[i], worker) then
    renewed[#renewed + 1], renewed[#renewed + 2] = now + lease_ms, id
    if cancels[i] then out[i] = 2 else out[i] = 1 end
  else
    out[i] = -2
  end
end
if #renewed > 0 then rcall('ZADD', leases_key, unpack(renewed)) end
return out
