--[[
  One HTTP submit in one round trip: check the API key, count the request against the key's rate, admit the job
  against its limit of unfinished jobs, then submit it with the queue's own submit.lua, which
  appliance/api/onetrip.py appends below unchanged, as the function submit_(KEYS, ARGV). Nothing is written when
  the key is gone or a limit refuses; an admission is given back when submit.lua refuses the job.

  The API process keeps the records of the keys it has seen; the record it sends must still be the stored one,
  so a key revoked (its field deleted) is refused by the next request, whichever API process serves it.

  Input:
    KEYS[1]  apikeys   HASH key id -> record (JSON); only read
    KEYS[2]  rate      STRING request count of the key's current one-second window (as rate.lua)
    KEYS[3]  inflight  ZSET of the key's submitted job ids (as inflight.lua)
    KEYS[4]  state     HASH id -> status (the queue's)
    KEYS[5..]  submit.lua's KEYS, in its order
    ARGV[1]  key id
    ARGV[2]  the key's record as the API process holds it
    ARGV[3]  the key's requests per second
    ARGV[4]  the key's limit of unfinished jobs
    ARGV[5..]  submit.lua's ARGV, in its order (its ARGV[11], here ARGV[15], is the job id)

  Returns:
    {1}  submitted; {-4}  a job with this id exists (submit.lua's codes)
    {10}  the key's stored record is not ARGV[2] (revoked): nothing counted
    {11, count, ms until the window ends}  over the key's rate
    {12, unfinished jobs}  over the key's limit of unfinished jobs
]]
-- @submit
-- @admission

if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then
  return {10}
end

local n, ttl = count_request(KEYS[2])
if n > tonumber(ARGV[3]) then
  return {11, n, ttl}
end

local id = ARGV[15]
local fits, count = admit(KEYS[3], KEYS[4], tonumber(ARGV[4]), {id})
if not fits then return {12, count} end

local code = submit_({unpack(KEYS, 5)}, {unpack(ARGV, 5)})
if code ~= 1 then redis.call('ZREM', KEYS[3], id) end
return {code}
