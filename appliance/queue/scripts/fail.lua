--[[
  Record a failed attempt (token-checked) and decide what happens next:
  a retryable failure goes back (now, or after its backoff delay) while attempts remain, else to the dead letter;
  a permanent failure fails at once; a cancelled one (or one whose cancellation was requested) ends cancelled.

  Input:
    KEYS[1]  owner     HASH id -> token|worker|claimed_ms
    KEYS[2]  leases    ZSET id -> deadline
    KEYS[3]  state     HASH id -> status
    KEYS[4]  attempts  HASH id -> attempts so far
    KEYS[5]  meta      HASH id -> shape|service|created_ms|priority|max_retries|timeout_ms|score
    KEYS[6]  errors    HASH id -> error history (JSON array)
    KEYS[7]  delayed   ZSET id -> retry due, ms
    KEYS[8]  ready     ZSET of the job's shape
    KEYS[9]  heads     ZSET shape -> best waiting score
    KEYS[10] done      ZSET id -> record expiry, ms
    KEYS[11] dead      ZSET id -> time of death, ms
    KEYS[12] counts    HASH of totals
    KEYS[13] events    STREAM
    KEYS[14] info      HASH id -> worker|claimed_ms|finished_ms
    KEYS[15] cancels   HASH id -> cancel request time
    KEYS[16] progress  HASH id -> progress JSON (dropped when the job goes back in line)
    KEYS[17] idle      ZSET of the job's shape: idle worker -> ms it began waiting
    KEYS[18] waiting   HASH idle worker -> hub channel of its process
    KEYS[19] children  ZSET (score 0) 'parent|child' of waiting children (includes/deps.lua)
    KEYS[20] blocked   ZSET child -> parents not finished yet
    KEYS[21] parents   HASH child -> policy|start ms|parents
    KEYS[22] charged   HASH id -> customer|pool its lease counts against (limits)
    KEYS[23] inflight  HASH customer[|pool] -> leased jobs of a limited customer
    KEYS[24] limited   ZSET (score 0) jobs a limit took out of line, by customer
    KEYS[25] limits_due  ZSET customer -> ms its limited jobs may go back in line

    ARGV[1]  channel prefix    ARGV[2]  queue name
    ARGV[3]  events mode        ARGV[4]  events maxlen
    ARGV[5]  job id             ARGV[6]  fencing token
    ARGV[7]  error record JSON (object)
    ARGV[8]  disposition: retry | permanent | cancelled
    ARGV[9]  retry delay, ms (0 = back in line now)
    ARGV[10] result TTL, ms     ARGV[11] dead-letter TTL, ms
    ARGV[12] shape id (must be the job's)
    ARGV[13] wake_one's how: '1' (PUBLISH), 's' (SPUBLISH, a Cluster) or '0'
    ARGV[14] what pub/sub carries of the error record (JSON: it without its details)

  Returns:
     3  retry scheduled       4  dead-lettered (retries exhausted)
     5  failed permanently    6  cancelled
    -2  lease lost           -5  wrong shape given

  Emits: retrying | dead | failed | cancelled (channel job_failed)
]]
local rcall = redis.call
-- @include now
-- @include emit
-- @include finish
-- @include owner
-- @include meta
-- @include history
-- @include deps
-- @include in_line
-- @include uncharge

local owner_key, leases_key, state_key, attempts_key, meta_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local errors_key, delayed_key, ready_key, heads_key, done_key = KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10]
local dead_key, counts_key, events_key, info_key, cancels_key = KEYS[11], KEYS[12], KEYS[13], KEYS[14], KEYS[15]
local progress_key, idle_key, waiting_key = KEYS[16], KEYS[17], KEYS[18]
local now, queue, mode, maxlen = server_now(), ARGV[2], ARGV[3], ARGV[4]
local id, token, disposition, delay = ARGV[5], ARGV[6], ARGV[8], tonumber(ARGV[9])

local worker, claimed = lease_of(owner_key, id, token, '')
if not worker then return -2 end
local meta = parse_meta(rcall('HGET', meta_key, id))
if meta.shape ~= ARGV[12] then return -5 end

rcall('HDEL', owner_key, id)
uncharge(uncharge_keys(), {id}, now)
rcall('ZREM', leases_key, id)
append_error(errors_key, id, ARGV[7])
if rcall('HDEL', cancels_key, id) == 1 then disposition = 'cancelled' end
local attempt = tonumber(rcall('HGET', attempts_key, id) or '0')
local fields = {'job', id, 'worker', worker, 'service', meta.service, 'attempt', attempt}
local message = ',"error":' .. ARGV[14]

if disposition == 'retry' and attempt <= meta.max_retries then
  if delay > 0 then
    rcall('HSET', state_key, id, 'pending')
    rcall('HDEL', progress_key, id)
    rcall('ZADD', delayed_key, now + delay, id)
  else
    local line = {state = state_key, progress = progress_key, ready = ready_key, heads = heads_key,
      idle = idle_key, waiting = waiting_key}
    back_in_line(line, id, meta.shape, meta.score, ARGV[13])
  end
  rcall('HINCRBY', counts_key, 'retried', 1)
  fields[#fields + 1] = 'retry_in_ms'
  fields[#fields + 1] = delay
  emit(events_key, mode, maxlen, 'job_failed', queue, 'retrying', fields, message)
  return 3
end

local k = {state = state_key, info = info_key, done = done_key, counts = counts_key, dead = dead_key,
  children = KEYS[19], blocked = KEYS[20], parents = KEYS[21], delayed = delayed_key, errors = errors_key,
  events = events_key}
if disposition == 'retry' then
  finish(k, id, 'dead', worker, claimed, now, tonumber(ARGV[11]))
  emit(events_key, mode, maxlen, 'job_failed', queue, 'dead', fields, message)
  settle_children(k, id, 'dead', now, tonumber(ARGV[10]))
  return 4
elseif disposition == 'cancelled' then
  finish(k, id, 'cancelled', worker, claimed, now, tonumber(ARGV[10]))
  emit(events_key, mode, maxlen, 'job_failed', queue, 'cancelled', fields, message)
  settle_children(k, id, 'cancelled', now, tonumber(ARGV[10]))
  return 6
end
finish(k, id, 'failed', worker, claimed, now, tonumber(ARGV[10]))
emit(events_key, mode, maxlen, 'job_failed', queue, 'failed', fields, message)
settle_children(k, id, 'failed', now, tonumber(ARGV[10]))
return 5
