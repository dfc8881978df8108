--[[
  Hand a leased job back to its ready index at its original place in line.

  Two callers: a draining worker (by token; the attempt does not count), and the supervisor or OnFailure
  handler returning the jobs of a dead worker (by worker id; the attempt counts, so a job that keeps crashing
  its worker ends in the dead letter instead of looping). A job whose cancellation was requested ends cancelled.

  Input:
    KEYS[1]  owner     HASH id -> token|worker|claimed_ms
    KEYS[2]  leases    ZSET id -> deadline
    KEYS[3]  state     HASH id -> status
    KEYS[4]  attempts  HASH id -> attempts so far
    KEYS[5]  meta      HASH id -> shape|service|created_ms|priority|max_retries|timeout_ms|score
    KEYS[6]  ready     ZSET of the job's shape
    KEYS[7]  heads     ZSET shape -> best waiting score
    KEYS[8]  counts    HASH of totals
    KEYS[9]  events    STREAM
    KEYS[10] cancels   HASH id -> cancel request time
    KEYS[11] done      ZSET id -> record expiry, ms
    KEYS[12] dead      ZSET id -> time of death, ms
    KEYS[13] errors    HASH id -> error history
    KEYS[14] info      HASH id -> worker|claimed_ms|finished_ms
    KEYS[15] progress  HASH id -> progress JSON (dropped when the job goes back in line: the next attempt
                       starts from nothing)
    KEYS[16] idle      ZSET of the job's shape: idle worker -> ms it began waiting
    KEYS[17] waiting   HASH idle worker -> hub channel of its process
    KEYS[18] children  ZSET (score 0) 'parent|child' of waiting children (includes/deps.lua)
    KEYS[19] blocked   ZSET child -> parents not finished yet
    KEYS[20] parents   HASH child -> policy|start ms|parents
    KEYS[21] delayed   ZSET id -> due, ms (children their last parent released go there, due at once)
    KEYS[22] charged   HASH id -> customer|pool its lease counts against (limits)
    KEYS[23] inflight  HASH customer[|pool] -> leased jobs of a limited customer
    KEYS[24] limited   ZSET (score 0) jobs a limit took out of line, by customer
    KEYS[25] limits_due  ZSET customer -> ms its limited jobs may go back in line

    ARGV[1]  channel prefix  ARGV[2]  queue name
    ARGV[3]  events mode      ARGV[4]  events maxlen
    ARGV[5]  job id
    ARGV[6]  who: 'token' (a worker hands its own lease back: the attempt does not count) or 'worker' (the
             jobs of a dead worker: the attempt counts)
    ARGV[7]  the fencing token, or the worker id
    ARGV[8]  reason (an id-safe word, e.g. drain, worker_failed)
    ARGV[9]  shape id (must be the job's)
    ARGV[10] wake_one's how: '1' (PUBLISH), 's' (SPUBLISH, a Cluster) or '0'
    ARGV[11] result TTL, ms   ARGV[12] dead-letter TTL, ms

  Returns:
     1  back in line       4  dead-lettered (the counted attempt was the last)
     6  cancelled (its cancellation had been requested)
    -2  lease lost / not owned by that worker      -5  wrong shape given

  Emits: released | dead | cancelled (channel job_failed)
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
local ready_key, heads_key, counts_key, events_key, cancels_key = KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10]
local done_key, dead_key, errors_key, info_key, progress_key = KEYS[11], KEYS[12], KEYS[13], KEYS[14], KEYS[15]
local idle_key, waiting_key = KEYS[16], KEYS[17]
local now, queue, mode, maxlen = server_now(), ARGV[2], ARGV[3], ARGV[4]
local id, counted, reason = ARGV[5], ARGV[6] == 'worker', ARGV[8]
if ARGV[7] == '' or (ARGV[6] ~= 'token' and not counted) then return -2 end

local worker, claimed
if counted then
  worker, claimed = lease_of(owner_key, id, '', ARGV[7])
else
  worker, claimed = lease_of(owner_key, id, ARGV[7], '')
end
if not worker then return -2 end
local meta = parse_meta(rcall('HGET', meta_key, id))
if meta.shape ~= ARGV[9] then return -5 end

rcall('HDEL', owner_key, id)
uncharge(uncharge_keys(), {id}, now)
rcall('ZREM', leases_key, id)
local attempt = tonumber(rcall('HGET', attempts_key, id) or '0')
local fields = {'job', id, 'worker', worker, 'service', meta.service, 'attempt', attempt, 'reason', reason}

local k = {state = state_key, info = info_key, done = done_key, counts = counts_key, dead = dead_key,
  children = KEYS[18], blocked = KEYS[19], parents = KEYS[20], delayed = KEYS[21], errors = errors_key,
  events = events_key}
if rcall('HDEL', cancels_key, id) == 1 then
  finish(k, id, 'cancelled', worker, claimed, now, tonumber(ARGV[11]))
  emit(events_key, mode, maxlen, 'job_failed', queue, 'cancelled', fields)
  settle_children(k, id, 'cancelled', now, tonumber(ARGV[11]))
  return 6
end

if counted then
  append_error_record(errors_key, id, {message = 'worker ' .. worker .. ' stopped (' .. reason .. ')',
    kind = reason, worker = worker, attempt = attempt, at = now})
  if attempt > meta.max_retries then
    finish(k, id, 'dead', worker, claimed, now, tonumber(ARGV[12]))
    emit(events_key, mode, maxlen, 'job_failed', queue, 'dead', fields)
    settle_children(k, id, 'dead', now, tonumber(ARGV[11]))
    return 4
  end
else
  rcall('HINCRBY', attempts_key, id, -1)
end

local line = {state = state_key, progress = progress_key, ready = ready_key, heads = heads_key,
  idle = idle_key, waiting = waiting_key}
back_in_line(line, id, meta.shape, meta.score, ARGV[10])
rcall('HINCRBY', counts_key, 'released', 1)
emit(events_key, mode, maxlen, 'job_failed', queue, 'released', fields)
return 1
