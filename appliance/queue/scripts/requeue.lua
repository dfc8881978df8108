--[[
  Move jobs of one shape back into its ready index: leases that expired (their worker stopped heartbeating;
  the attempt counts, the job is dead-lettered when none remain) and retries whose delay is over.
  Each id is re-checked here, atomically: a lease renewed since reap.lua listed it stays with its worker.

  Input:
    KEYS[1]  ready     ZSET of the shape
    KEYS[2]  heads     ZSET shape -> best waiting score
    KEYS[3]  leases    ZSET id -> deadline
    KEYS[4]  delayed   ZSET id -> retry due
    KEYS[5]  owner     HASH id -> token|worker|claimed_ms
    KEYS[6]  state     HASH id -> status
    KEYS[7]  attempts  HASH id -> attempts so far
    KEYS[8]  meta      HASH id -> shape|service|created_ms|priority|max_retries|timeout_ms|score
    KEYS[9]  errors    HASH id -> error history
    KEYS[10] done      ZSET id -> record expiry
    KEYS[11] dead      ZSET id -> time of death
    KEYS[12] counts    HASH of totals
    KEYS[13] events    STREAM
    KEYS[14] info      HASH id -> worker|claimed_ms|finished_ms
    KEYS[15] cancels   HASH id -> cancel request time
    KEYS[16] progress  HASH id -> progress JSON (dropped when the job goes back in line)
    KEYS[17] idle      ZSET of the shape: idle worker -> ms it began waiting
    KEYS[18] waiting   HASH idle worker -> hub channel of its process
    KEYS[19] children  ZSET (score 0) 'parent|child' of waiting children (includes/deps.lua)
    KEYS[20] blocked   ZSET child -> parents not finished yet
    KEYS[21] parents   HASH child -> policy|start ms|parents
    KEYS[22] charged   HASH id -> customer|pool its lease counts against (limits)
    KEYS[23] inflight  HASH customer[|pool] -> leased jobs of a limited customer
    KEYS[24] limited   ZSET (score 0) jobs a limit took out of line, by customer
    KEYS[25] limits_due  ZSET customer -> ms its limited jobs may go back in line

    ARGV[1]  channel prefix  ARGV[2]  queue name
    ARGV[3]  events mode    ARGV[4]  events maxlen
    ARGV[5]  shape id       ARGV[6]  result TTL, ms
    ARGV[7]  dead-letter TTL, ms
    ARGV[8]  wake_one's how: '1' (PUBLISH), 's' (SPUBLISH, a Cluster) or '0'
    ARGV[9..] job ids

  Returns: {requeued, dead-lettered, cancelled}

  Emits: lease_expired | dead | cancelled (channel job_failed)
]]
local rcall = redis.call
-- @include now
-- @include emit
-- @include finish
-- @include meta
-- @include history
-- @include deps
-- @include in_line
-- @include uncharge

local ready_key, heads_key, leases_key, delayed_key, owner_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local state_key, attempts_key, meta_key, errors_key, done_key = KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10]
local dead_key, counts_key, events_key, info_key, cancels_key = KEYS[11], KEYS[12], KEYS[13], KEYS[14], KEYS[15]
local progress_key, idle_key, waiting_key = KEYS[16], KEYS[17], KEYS[18]
local now, queue, mode, maxlen, shape = server_now(), ARGV[2], ARGV[3], ARGV[4], ARGV[5]

local k = {state = state_key, info = info_key, done = done_key, counts = counts_key, dead = dead_key,
  children = KEYS[19], blocked = KEYS[20], parents = KEYS[21], delayed = delayed_key, errors = errors_key,
  events = events_key}
local requeued, died, cancelled = 0, 0, 0
local line = {state = state_key, progress = progress_key, ready = ready_key, heads = heads_key}
local function requeue(id, meta)
  back_in_line(line, id, shape, meta.score, nil)
  requeued = requeued + 1
end

for i = 9, #ARGV do
  local id = ARGV[i]
  local raw = rcall('HGET', meta_key, id)
  local meta = raw and parse_meta(raw)
  if meta and meta.shape == shape then
    local deadline = rcall('ZSCORE', leases_key, id)
    if deadline and tonumber(deadline) <= now then
      local own = rcall('HGET', owner_key, id) or ''
      local worker, claimed = string.match(own, '^[^|]*|(.*)|([^|]*)$')
      worker, claimed = worker or '', claimed or '0'
      rcall('HDEL', owner_key, id)
      uncharge(uncharge_keys(), {id}, now)
      rcall('ZREM', leases_key, id)
      local attempt = tonumber(rcall('HGET', attempts_key, id) or '0')
      append_error_record(errors_key, id, {message = 'lease expired: worker ' .. worker .. ' stopped renewing it',
        kind = 'lease_expired', worker = worker, attempt = attempt, at = now})
      local fields = {'job', id, 'worker', worker, 'service', meta.service, 'attempt', attempt}
      if rcall('HDEL', cancels_key, id) == 1 then
        finish(k, id, 'cancelled', worker, claimed, now, tonumber(ARGV[6]))
        cancelled = cancelled + 1
        emit(events_key, mode, maxlen, 'job_failed', queue, 'cancelled', fields)
        settle_children(k, id, 'cancelled', now, tonumber(ARGV[6]))
      elseif attempt > meta.max_retries then
        finish(k, id, 'dead', worker, claimed, now, tonumber(ARGV[7]))
        died = died + 1
        emit(events_key, mode, maxlen, 'job_failed', queue, 'dead', fields)
        settle_children(k, id, 'dead', now, tonumber(ARGV[6]))
      else
        requeue(id, meta)
        rcall('HINCRBY', counts_key, 'lease_expired', 1)
        emit(events_key, mode, maxlen, 'job_failed', queue, 'lease_expired', fields)
      end
    else
      local due = rcall('ZSCORE', delayed_key, id)
      if due and tonumber(due) <= now then
        rcall('ZREM', delayed_key, id)
        requeue(id, meta)
      end
    end
  end
end
-- One idle worker per job put back (each stops at once when none is left).
for _ = 1, requeued do
  if not wake_one({idle = idle_key, waiting = waiting_key}, shape, ARGV[8]) then break end
end
return {requeued, died, cancelled}
