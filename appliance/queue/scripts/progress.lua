--[[
  Record a running job's progress (token-checked) and publish it.

  Input:
    KEYS[1]  owner     HASH id -> token|worker|claimed_ms
    KEYS[2]  state     HASH id -> status
    KEYS[3]  progress  HASH id -> progress JSON
    KEYS[4]  cancels   HASH id -> cancel request time
    KEYS[5]  events    STREAM

    ARGV[1]  channel prefix  ARGV[2]  queue name
    ARGV[3]  events mode    ARGV[4]  events maxlen
    ARGV[5]  job id         ARGV[6]  fencing token
    ARGV[7]  progress JSON  ARGV[8]  percent (number)
    ARGV[9]  what pub/sub carries of it (JSON: percent and message, never its data)

  Returns:
     1  recorded
     2  recorded, and cancellation was requested
    -2  lease lost

  Emits: progress (channel update_job_progress)
]]
local rcall = redis.call
-- @include now
-- @include emit
-- @include owner

local owner_key, state_key, progress_key, cancels_key, events_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local queue, mode, maxlen, id, token = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]

local worker = lease_of(owner_key, id, token, '')
if not worker then return -2 end
rcall('HSET', state_key, id, 'running')
rcall('HSET', progress_key, id, ARGV[7])
emit(events_key, mode, maxlen, 'update_job_progress', queue, 'progress',
  {'job', id, 'worker', worker, 'percent', ARGV[8]}, ',"progress":' .. ARGV[9])
if rcall('HEXISTS', cancels_key, id) == 1 then return 2 end
return 1
