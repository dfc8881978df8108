--[[
  Cancel a job: a waiting (or retry-delayed, or waiting for its parents) one is cancelled at once; a leased one
  is flagged and its worker told on the cancel channel (and by its next heartbeat), so the connector can
  interrupt the work. A job cancelled at once settles its own waiting children (includes/deps.lua). A waiting
  job that a customer's limit took out of line leaves `limited` with it (its member is rebuilt from the job's
  customer and meta: includes/limited.lua), so nothing counts it as held afterwards.

  Input:
    KEYS[1]  state    HASH id -> status
    KEYS[2]  meta     HASH id -> shape|...
    KEYS[3]  ready    ZSET of the job's shape
    KEYS[4]  heads    ZSET shape -> best waiting score
    KEYS[5]  delayed  ZSET id -> retry due
    KEYS[6]  owner    HASH id -> token|worker|claimed_ms
    KEYS[7]  cancels  HASH id -> cancel request time
    KEYS[8]  done     ZSET id -> record expiry
    KEYS[9]  counts   HASH of totals
    KEYS[10] events   STREAM
    KEYS[11] info     HASH id -> worker|claimed_ms|finished_ms
    KEYS[12] errors   HASH id -> error history
    KEYS[13] dead     ZSET id -> time of death
    KEYS[14] children ZSET (score 0) 'parent|child' of waiting children (includes/deps.lua)
    KEYS[15] blocked  ZSET child -> parents not finished yet
    KEYS[16] parents  HASH child -> policy|start ms|parents
    KEYS[17] customer HASH id -> customer (absent: the default customer '-')
    KEYS[18] limited  ZSET (score 0) '<customer>|<score>|<shape>|<id>': jobs a limit took out of line

    ARGV[1]  channel prefix  ARGV[2]  queue name
    ARGV[3]  events mode    ARGV[4]  events maxlen
    ARGV[5]  job id         ARGV[6]  result TTL, ms
    ARGV[7]  shape id (must be the job's)
    ARGV[8]  cancel channel
    ARGV[9]  's' on a Cluster: SPUBLISH (the channel carries the queue's hash tag), else PUBLISH

  Returns:
     1  cancelled now
     2  cancellation requested from the worker running it
    -1  no such job       -3  already finished       -5  wrong shape given

  Emits: cancelled | cancel_requested (channel job_failed)
]]
local rcall = redis.call
-- @include now
-- @include emit
-- @include finish
-- @include heads
-- @include history
-- @include deps
-- @include limited

local state_key, meta_key, ready_key, heads_key, delayed_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local owner_key, cancels_key, done_key, counts_key, events_key, info_key =
  KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10], KEYS[11]
local now, queue, mode, maxlen, id = server_now(), ARGV[2], ARGV[3], ARGV[4], ARGV[5]

local status = rcall('HGET', state_key, id)
if not status then return -1 end
if status == 'completed' or status == 'failed' or status == 'cancelled' or status == 'dead' then return -3 end
local meta = rcall('HGET', meta_key, id)
local shape = string.match(meta, '^([^|]*)|')
if shape ~= ARGV[7] then return -5 end

if status == 'pending' or status == 'blocked' then
  local k = {state = state_key, info = info_key, done = done_key, counts = counts_key, dead = KEYS[13],
    children = KEYS[14], blocked = KEYS[15], parents = KEYS[16], delayed = delayed_key, errors = KEYS[12],
    events = events_key}
  if status == 'blocked' then
    unlink_child(k, id)
  elseif rcall('ZREM', ready_key, id) == 1 then
    refresh_head(ready_key, heads_key, shape)
  elseif rcall('ZREM', delayed_key, id) == 0 then
    -- Neither in line nor delayed: a limit (or a pause) holds it. One O(log N) ZREM; unlimit.lua would
    -- otherwise drop the entry only at the customer's next release.
    local customer, score = rcall('HGET', KEYS[17], id) or '-', string.match(meta, '|([^|]*)$')
    if tonumber(score) then rcall('ZREM', KEYS[18], limited_member(customer, score, shape, id)) end
  end
  finish(k, id, 'cancelled', '', 0, now, tonumber(ARGV[6]))
  emit(events_key, mode, maxlen, 'job_failed', queue, 'cancelled', {'job', id})
  settle_children(k, id, 'cancelled', now, tonumber(ARGV[6]))
  return 1
end

rcall('HSET', cancels_key, id, now)
local worker = string.match(rcall('HGET', owner_key, id) or '', '^[^|]*|(.*)|[^|]*$') or ''
rcall(ARGV[9] == 's' and 'SPUBLISH' or 'PUBLISH', ARGV[8], id .. '|' .. worker)
emit(events_key, mode, maxlen, 'job_failed', queue, 'cancel_requested', {'job', id, 'worker', worker})
return 2
