--[[
  Submit a job: store it, index it in its shape's ready set, register a new shape, wake one idle
  worker that serves the shape (never all of them).

  Input:
    KEYS[1]  spec      HASH id -> submitted job (JSON)
    KEYS[2]  meta      HASH id -> shape|service|created_ms|priority|max_retries|timeout_ms|score
    KEYS[3]  state     HASH id -> status
    KEYS[4]  ready     ZSET of this job's shape: id -> score
    KEYS[5]  heads     ZSET shape -> best waiting score
    KEYS[6]  shapes    HASH shape -> canonical requirements (JSON)
    KEYS[7]  counts    HASH of totals
    KEYS[8]  seq       STRING counter (FIFO tie-break within a millisecond)
    KEYS[9]  events    STREAM
    KEYS[10] idle      ZSET of this job's shape: idle worker -> ms it began waiting
    KEYS[11] waiting   HASH idle worker -> hub channel of its process

    ARGV[1]  channel prefix      ARGV[2]  queue name
    ARGV[3]  events mode          ARGV[4]  events maxlen
    ARGV[5]  job id               ARGV[6]  job JSON
    ARGV[7]  shape id             ARGV[8]  shape JSON
    ARGV[9]  service              ARGV[10] priority
    ARGV[11] priority step, ms    ARGV[12] max retries
    ARGV[13] timeout, ms (0 = none)
    ARGV[14] wake_one's how: '1' (PUBLISH), 's' (SPUBLISH, a Cluster) or '0'
    ARGV[15] new-shape channel

  Returns:
     1  submitted
    -4  duplicate: a job with this id exists

  Emits: submitted (channel job_submitted)
]]
local rcall = redis.call
-- @include now
-- @include emit
-- @include sentinel
-- @include in_line

local spec_key, meta_key, state_key, ready_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local heads_key, shapes_key, counts_key, seq_key, events_key = KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local idle_key, waiting_key = KEYS[10], KEYS[11]
local now, queue, mode, maxlen = server_now(), ARGV[2], ARGV[3], ARGV[4]
local id, shape, service, priority = ARGV[5], ARGV[7], ARGV[9], tonumber(ARGV[10])

if rcall('HEXISTS', state_key, id) == 1 then
  return -4
end

-- Priority is a time offset: a job of priority p ranks as if submitted p steps earlier. Higher priority wins,
-- and no job waits more than (priority difference x step) behind later arrivals.
local seq = rcall('INCR', seq_key)
local score = string.format('%.0f', (now - priority * tonumber(ARGV[11])) * 1000 + (seq % 1000))

rcall('HSET', spec_key, id, ARGV[6])
rcall('HSET', meta_key, id, shape .. '|' .. service .. '|' .. now .. '|' .. ARGV[10] .. '|' .. ARGV[12]
  .. '|' .. ARGV[13] .. '|' .. score)
back_in_line({state = state_key, ready = ready_key, heads = heads_key}, id, shape, score, nil)
if rcall('HSETNX', shapes_key, shape, ARGV[8]) == 1 then
  -- A member longer than 64 bytes keeps heads in Redis's skiplist+hashtable encoding: in the compact
  -- (listpack) encoding claim.lua's ZMSCORE of its candidates and every ZADD would scan the whole index.
  rcall('ZADD', heads_key, 'NX', '+inf', HEADS_SENTINEL)
  rcall(ARGV[14] == 's' and 'SPUBLISH' or 'PUBLISH', ARGV[15], shape)
end
rcall('HINCRBY', counts_key, 'submitted', 1)
wake_one({idle = idle_key, waiting = waiting_key}, shape, ARGV[14])
emit(events_key, mode, maxlen, 'job_submitted', queue, 'submitted',
  {'job', id, 'service', service, 'shape', shape, 'priority', ARGV[10]})
return 1
