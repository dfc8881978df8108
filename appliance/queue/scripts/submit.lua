--[[
  Submit a job: store it, index it in its shape's ready set (or, when it is to start later, in the delayed set,
  which the reaper moves back in line when it falls due), register a new shape, wake one idle worker that serves
  the shape (never all of them). A job submitted with parents (`after`) that have not all finished waits
  instead, status 'blocked', out of every index a claim reads, until includes/deps.lua releases it.

  Input:
    KEYS[1]  spec      HASH id -> submitted job (JSON)
    KEYS[2]  meta      HASH id -> shape|service|created_ms|priority|max_retries|timeout_ms|score
    KEYS[3]  state     HASH id -> status
    KEYS[4]  ready     ZSET of this job's shape: id -> score
    KEYS[5]  heads     ZSET shape -> best waiting score
    KEYS[6]  shapes    HASH shape -> canonical requirements (JSON)
    KEYS[7]  counts    HASH of totals
    KEYS[8]  events    STREAM
    KEYS[9]  idle      ZSET of this job's shape: idle worker -> ms it began waiting
    KEYS[10] waiting   HASH idle worker -> hub channel of its process
    KEYS[11] fair_finish   HASH customer -> tag|arrival of its latest job (score units; fair share)
    KEYS[12] fair_weights  HASH customer -> weight (default 1)
    KEYS[13] delayed   ZSET id -> ms it falls due
    KEYS[14] customer  HASH id -> customer (jobs that name one: claim checks pauses against it)
    KEYS[15] tenant    ZSET of the job's customer: id -> submit order (written only when ARGV[18] is set)
    KEYS[16] children  ZSET (score 0) 'parent|child' of waiting children (includes/deps.lua)
    KEYS[17] blocked   ZSET child -> parents not finished yet
    KEYS[18] parents   HASH child -> policy|start ms|parents
    KEYS[19] errors    HASH id -> error history (a job whose parent already failed ends at once)
    KEYS[20] info      HASH id -> worker|claimed_ms|finished_ms
    KEYS[21] done      ZSET id -> record expiry, ms
    KEYS[22] dead      ZSET id -> time of death (unused: named for includes/finish.lua)

    ARGV[1]  channel prefix      ARGV[2]  queue name
    ARGV[3]  events mode          ARGV[4]  events maxlen
    ARGV[5]  shape id             ARGV[6]  shape JSON
    ARGV[7]  service              ARGV[8]  priority step, ms
    ARGV[9]  wake_one's how: '1' (PUBLISH), 's' (SPUBLISH, a Cluster) or '0'
    ARGV[10] new-shape channel
    ARGV[11] job id               ARGV[12] job JSON
    ARGV[13] priority             ARGV[14] max retries
    ARGV[15] timeout, ms (0 = none)
    ARGV[16] start at, epoch ms ('' = now)
    ARGV[17] start after a delay, ms, by the server's clock ('' = none)
    ARGV[18] customer ('' = the default customer)
    ARGV[19] on parent failure: fail | cancel | ignore ('' = the job has no parents)
    ARGV[20] result TTL, ms (a job that ends at once because a parent failed)
    ARGV[21..] parent ids (each must exist)
  A plain job (no customer, no parents, no start time) is called with KEYS[1..12] and ARGV[1..15] only: it
  touches none of the others, and each argument costs the server about 1 µs per call (docs/performance.md §6).
  ARGV[1..10] are the same for every job of a shape: the client packs them once with the KEYS (connections.py).

  Returns:
     1  submitted
     7  submitted, waiting for its parents (status blocked)
     5  submitted and failed at once: a parent had failed (policy fail)
     6  submitted and cancelled at once: a parent had failed (policy cancel)
    -4  duplicate: a job with this id exists
    -7  a parent named in `after` does not exist

  Emits: submitted (channel job_submitted; with `blocked` 1 for a job that waits for its parents: its status is
  blocked until `unblocked`); failed | cancelled (channel job_failed) for a job ended at once
]]
local rcall = redis.call
-- @include now
-- @include int
-- @include emit
-- @include sentinel
-- @include in_line
-- @include fair

local spec_key, meta_key, state_key, ready_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local heads_key, shapes_key, counts_key, events_key = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local idle_key, waiting_key, finish_key, weights_key = KEYS[9], KEYS[10], KEYS[11], KEYS[12]
local delayed_key, customer_key = KEYS[13], KEYS[14]
local children_key, blocked_key, parents_key = KEYS[16], KEYS[17], KEYS[18]
local now, queue, mode, maxlen = server_now(), ARGV[2], ARGV[3], ARGV[4]
local id, shape, service = ARGV[11], ARGV[5], ARGV[7]
local customer, policy = ARGV[18] or '', ARGV[19] or ''

-- The duplicate check: a job without parents takes its id and its first status in one command (nothing is
-- written before it, so a duplicate changes nothing); one with parents is checked first and written once they
-- were found, since a missing parent must leave no trace.
local state_set = policy == ''
if state_set then
  if rcall('HSETNX', state_key, id, 'pending') == 0 then return -4 end
elseif rcall('HEXISTS', state_key, id) == 1 then
  return -4
end

-- Parents: each must exist (so no cycle can form). Finished ones count as done, or end the job at once by its
-- policy; it waits for the others.
local parents, waits_for, ended_by, ended_how = {}, {}, nil, nil
if policy ~= '' then
  local seen = {}
  for i = 21, #ARGV do
    local parent = ARGV[i]
    if not seen[parent] then
      seen[parent] = true
      parents[#parents + 1] = parent
      local status = rcall('HGET', state_key, parent)
      if not status then return -7 end
      if status == 'failed' or status == 'dead' or status == 'cancelled' then
        if policy ~= 'ignore' and not ended_by then ended_by, ended_how = parent, status end
      elseif status ~= 'completed' then
        waits_for[#waits_for + 1] = parent
      end
    end
  end
end
local blocked = #waits_for > 0 and not ended_by

-- A job that starts later ranks as if submitted when it falls due, not ahead of what arrived meanwhile.
-- A plain job has no ARGV[16]: no tonumber calls (~700 instructions each here) for it.
local start = now
if ARGV[16] then start = tonumber(ARGV[16]) or (tonumber(ARGV[17]) and now + tonumber(ARGV[17])) or now end
local later = start > now

-- Priority is a time offset: a job of priority p ranks as if submitted p steps earlier. Higher priority wins,
-- and no job waits more than (priority difference x step) of virtual time behind later arrivals. Scores are
-- whole score units: written as '%d' text (includes/int.lua).
-- The FIFO tie-break within a millisecond: the count of submissions, which this one raises.
local seq = rcall('HINCRBY', counts_key, 'submitted', '1')
local step_units = ARGV[13] == '0' and 0 or tonumber(ARGV[13]) * tonumber(ARGV[8]) * 1000  -- no conversion for 0
local score, head_score
if later then
  -- A scheduled first attempt ranks by when it falls due and takes no part in fair share (docs/queue.md). One
  -- waiting for parents keeps the place (and fair-share tag) its submission gave it, like a replayed job.
  score = start * 1000 - step_units + (seq % 1000)
else
  score, head_score = fair_tag(ready_key, meta_key, finish_key, weights_key, customer, now * 1000 + (seq % 1000),
    ARGV[8])
  score = score - step_units
end
-- Whether the job ranks first in its shape: only then does the shape's entry in heads (its ready index's best
-- score: every ZADD to a ready index lowers it, every removal refreshes it) need the ZADD.
local first = not head_score or score < head_score
score = int_s(score)

rcall('HSET', spec_key, id, ARGV[12])
if customer ~= '' then rcall('HSET', customer_key, id, customer) end
rcall('HSET', meta_key, id, shape .. '|' .. service .. '|' .. int_s(now) .. '|' .. ARGV[13] .. '|' .. ARGV[14]
  .. '|' .. ARGV[15] .. '|' .. score)
if policy ~= '' then
  rcall('HSET', parents_key, id, policy .. '|' .. int_s(start) .. '|' .. table.concat(parents, ','))
end
-- `known`: the shape was in heads already, so registered (a shape enters heads only after its registration,
-- and neither is ever removed while the other stays): no HSETNX of its record.
local known = false
if blocked then
  rcall('HSET', state_key, id, 'blocked')
  rcall('ZADD', blocked_key, #waits_for, id)
  local edges = {}
  for _, parent in ipairs(waits_for) do
    edges[#edges + 1], edges[#edges + 2] = 0, parent .. '|' .. id
  end
  rcall('ZADD', children_key, unpack(edges))
elseif ended_by then
  rcall('HSET', state_key, id, 'pending')  -- end_child below finishes it
elseif later then
  if not state_set then rcall('HSET', state_key, id, 'pending') end
  rcall('ZADD', delayed_key, int_s(start), id)
else
  -- Its status is set already unless it named parents; the wake comes after the event.
  -- A job behind the head leaves heads as it is: the shape is in heads, so registered (`known`).
  known = back_in_line({state = not state_set and state_key or nil, ready = ready_key,
    heads = first and heads_key or nil}, id, shape, score, nil) == 0
end
if not known and rcall('HSETNX', shapes_key, shape, ARGV[6]) == 1 then
  -- A member longer than 64 bytes keeps heads in Redis's skiplist+hashtable encoding: in the compact
  -- (listpack) encoding claim.lua's ZMSCORE of its candidates and every ZADD would scan the whole index.
  rcall('ZADD', heads_key, 'NX', '+inf', HEADS_SENTINEL)
  rcall(ARGV[9] == 's' and 'SPUBLISH' or 'PUBLISH', ARGV[10], shape)
end
-- The customer's own index lets the HTTP API page through one tenant's jobs without scanning the queue's.
if customer ~= '' then rcall('ZADD', KEYS[15], int_s(now * 1000 + (seq % 1000)), id) end
-- The event as emit_many takes one: its stream entry and its message, each built by a table constructor (emit
-- fills a table field by field and converts each value).
local entry = {'job', id, 'service', service, 'shape', shape, 'priority', ARGV[13]}
local doc = {job = id, service = service, shape = shape, priority = ARGV[13]}
if blocked or ended_by then
  local n = tostring(#parents)
  entry[9], entry[10], doc.parents = 'parents', n, n
  if blocked then entry[11], entry[12], doc.blocked = 'blocked', '1', '1' end
elseif later then
  local at = int_s(start)
  entry[9], entry[10], doc.run_at = 'run_at', at, at
else
  wake_one({idle = idle_key, waiting = waiting_key}, shape, ARGV[9])
end
emit_many(events_key, mode, maxlen, 'job_submitted', queue, 'submitted', {doc}, entry)
if ended_by then
  -- Only here: a closure per function of these includes costs every call that defines them (~1-2k instructions
  -- each), and a job ends at submission only when a parent had failed.
-- @include finish
-- @include history
-- @include deps
  local k = {state = state_key, info = KEYS[20], done = KEYS[21], counts = counts_key, dead = KEYS[22],
    children = children_key, blocked = blocked_key, parents = parents_key, errors = KEYS[19], events = events_key}
  local status = policy == 'cancel' and 'cancelled' or 'failed'
  end_child(k, id, status, ended_by, ended_how, now, tonumber(ARGV[20]))
  return status == 'cancelled' and 6 or 5
end
return blocked and 7 or 1
