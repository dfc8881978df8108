--[[
  Complete a job (token-checked): store its result, end its lease, schedule its record's expiry.

  Input:
    KEYS[1]  owner    HASH id -> token|worker|claimed_ms
    KEYS[2]  leases   ZSET id -> deadline
    KEYS[3]  state    HASH id -> status
    KEYS[4]  results  HASH id -> result JSON
    KEYS[5]  info     HASH id -> worker|claimed_ms|finished_ms
    KEYS[6]  done     ZSET id -> record expiry, ms
    KEYS[7]  counts   HASH of totals
    KEYS[8]  events   STREAM
    KEYS[9]  cancels  HASH id -> cancel request time
    KEYS[10] meta     HASH id -> shape|service|...

    ARGV[1]  unused        ARGV[2]  queue name
    ARGV[3]  events mode    ARGV[4]  events maxlen
    ARGV[5]  result TTL, ms
    ARGV[6..]  one triple per job: job id, fencing token, result JSON

  Returns:
    one code per job, in order:
     1  completed
    -2  lease lost: the outcome is not written

  Emits: completed (channel complete_job), one per completed job
]]
local rcall = redis.call
-- @include now
-- @include emit
-- @include finish
-- @include owner

local owner_key, leases_key, state_key, results_key, info_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local done_key, counts_key, events_key, cancels_key, meta_key = KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10]
local now, queue, mode, maxlen = server_now(), ARGV[2], ARGV[3], ARGV[4]
local ttl_ms = tonumber(ARGV[5])
local keys = {state = state_key, info = info_key, done = done_key, counts = counts_key}

local codes = {}
for at = 6, #ARGV, 3 do
  local id, token, result = ARGV[at], ARGV[at + 1], ARGV[at + 2]
  local worker, claimed = lease_of(owner_key, id, token, '')
  if worker then
    rcall('HDEL', owner_key, id)
    rcall('ZREM', leases_key, id)
    rcall('HDEL', cancels_key, id)
    rcall('HSET', results_key, id, result)
    finish(keys, id, 'completed', worker, claimed, now, ttl_ms)
    local service = string.match(rcall('HGET', meta_key, id) or '', '^[^|]*|([^|]*)|')
    emit(events_key, mode, maxlen, 'complete_job', queue, 'completed',
      {'job', id, 'worker', worker, 'service', service or '', 'duration_ms', now - claimed}, ',"result":' .. result)
    codes[#codes + 1] = 1
  else
    codes[#codes + 1] = -2
  end
end
return codes
