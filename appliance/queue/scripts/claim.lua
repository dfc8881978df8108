--[[
  Claim up to N of the best waiting jobs a worker class can run, and lease them.

  A worker class is a set of shape ids (the `class` SET, written by the client from its shape list). The claim
  walks `heads` (shape -> best waiting score, over every shape) from the best; the first members the class
  holds are its best shapes. The client passes, as candidates, the ready indexes of the shapes it expects to
  be best (the hint of its previous reply). It claims from the candidate with the best head when that head
  is within the slack of the class's very best (slack 0: strictly the best). Otherwise it changes nothing and
  answers 'retry' with a fresh hint, so every key it touches is declared in KEYS. The slack lets concurrent
  workers of one class take near-simultaneous jobs of different shapes without racing for the single best.

  Cost: O(log S + W) on `heads` (S shapes waiting; W = shapes of other classes ranked ahead of this class's
  best ones), O(log N + n) on one ready index, then O(1) per claimed job. Neither the number of shapes the
  worker serves nor the queue depth changes it.

  Input:
    KEYS[1]  heads     ZSET shape -> best waiting score
    KEYS[2]  class     SET of the shape ids this worker class serves
    KEYS[3]  spec      HASH id -> job JSON
    KEYS[4]  meta      HASH id -> shape|service|created_ms|...
    KEYS[5]  state     HASH id -> status
    KEYS[6]  attempts  HASH id -> attempts so far
    KEYS[7]  owner     HASH id -> token|worker|claimed_ms
    KEYS[8]  leases    ZSET id -> lease deadline, ms
    KEYS[9]  counts    HASH of totals
    KEYS[10] events    STREAM
    KEYS[11] paused    HASH 'queue' | 'shape:<id>' | 'customer:<id>' -> ms: what claims skip
    KEYS[12] held      ZSET (score 0) '<customer>|<shape>|<id>': jobs taken out of line by their customer's pause
    KEYS[13] customer  HASH id -> customer (absent: the default customer '-')
    KEYS[14] limits    HASH of per-customer limits (empty: no limit is checked)
    KEYS[15] inflight  HASH customer[|pool] -> leased jobs of a limited customer
    KEYS[16] charged   HASH id -> customer|pool its lease counts against
    KEYS[17] buckets   HASH customer -> tokens|ms of its start-rate bucket
    KEYS[18] limited   ZSET (score 0) '<customer>|<score>|<shape>|<id>': jobs a limit took out of line
    KEYS[19] limits_due  ZSET customer -> ms from which its limited jobs may go back in line
    KEYS[20..19+C]     ready ZSETs of the C candidate shapes (C >= 1), in the order of ARGV[12..11+C]

    ARGV[1]  channel prefix  ARGV[2]  queue name
    ARGV[3]  events mode      ARGV[4]  events maxlen
    ARGV[5]  worker id        ARGV[6]  fencing token prefix (random; job i of the batch gets prefix.i)
    ARGV[7]  lease, ms        ARGV[8]  most jobs to claim (n >= 1)
    ARGV[9]  slack, in score units (1 ms of submission = 1000)
    ARGV[10] the worker's pool ('' for none): per-pool caps count the jobs its workers run
    ARGV[11] '1' to answer 'unlimit' when a customer's limited jobs are due back in line (limits.py puts them
             back, then claims again with '0')
    ARGV[12..11+C]  candidate shape ids

  Returns:
    {'ok', hint, deadline ms, shape, id, job JSON, attempt, id, job JSON, attempt, ...}  (1..n jobs, all of
       `shape`, in score order)
    {'retry', hint}   the class's best job waits in a shape that is not a candidate: nothing was changed
    {'none'}          no job waits in any of the class's shapes that is not paused (or the queue is paused)
    {'noclass'}       the class SET does not exist (never written, or expired): write it and call again
    {'unlimit'}       a limited customer's jobs are due back in line (ARGV[11] '1'): nothing was changed
    where hint = the class's best shapes now, best first, comma-separated ('' when none is known to wait)

  Emits: claimed, one stream entry and one job_claimed message for them all (includes/emit.lua `emit_many`)
]]
local rcall = redis.call
-- @include now
-- @include emit
-- @include heads
-- @include sentinel
-- @include limit
-- @include states
-- @include int
-- @include class_top
-- @shared

local heads_key, class_key, spec_key, meta_key, state_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local attempts_key, owner_key, leases_key, counts_key, events_key = KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10]
local queue, mode, maxlen = ARGV[2], ARGV[3], ARGV[4]
-- Numbers in text by arithmetic's conversion, not tonumber: no call of a C function (~700 instructions each).
local worker, token, lease_ms, want = ARGV[5], ARGV[6], ARGV[7] + 0, ARGV[8] + 0
local slack = ARGV[9] + 0
local paused_key, held_key, customer_key = KEYS[11], KEYS[12], KEYS[13]
local CANDIDATES, FIRST = 19, 11  -- candidate i: ready index KEYS[CANDIDATES + i], shape id ARGV[FIRST + i]
local pool = ARGV[10]
-- Inside finish_claim.lua, its clock: one TIME for both transitions.
local now = shared and shared.now or server_now()

-- Limits and pauses: one EXISTS while no customer has a limit and nothing is paused (an empty hash is no key);
-- inside finish_claim.lua, its one EXISTS covers them (`shared.quiet`).
local limits_on, pauses = false, false
if not (shared and shared.quiet) and rcall('EXISTS', KEYS[14], paused_key) > 0 then
  limits_on = rcall('EXISTS', KEYS[14]) == 1
  pauses = rcall('EXISTS', paused_key) == 1
end

-- Limits (docs/queue.md "Per-customer limits").
local gate
if limits_on then
  local lk = {limits = KEYS[14], inflight = KEYS[15], charged = KEYS[16], buckets = KEYS[17], limited = KEYS[18],
    limits_due = KEYS[19]}
  if ARGV[11] == '1' then
    local due = rcall('ZRANGE', lk.limits_due, 0, 0, 'WITHSCORES')
    if due[2] and tonumber(due[2]) <= now then return {'unlimit'} end
  end
  gate = limit_gate(lk, pool, now)
end

-- Pause and resume (docs/queue.md): a paused queue claims nothing; a paused shape is passed over as if its head
-- were absent; a paused customer's jobs are moved to `held` below.
if pauses and rcall('HEXISTS', paused_key, 'queue') == 1 then return {'none'} end
local function shape_paused(shape)
  return pauses and rcall('HEXISTS', paused_key, 'shape:' .. shape) == 1
end

-- The class's two best shapes in score order, {shape, score} each (the best, and the runner-up that bounds a
-- batch), paused shapes passed over (includes/class_top.lua).
local function class_top()
  local top, s1, v1, s2, v2 = {}, class_top_of(heads_key, class_key, pauses and shape_paused or nil)
  if s1 then top[1] = {s1, v1} end
  if s2 then top[2] = {s2, v2} end
  return top
end

local function hint_of(top)
  local names = {}
  for i, entry in ipairs(top) do names[i] = entry[1] end
  return table.concat(names, ',')
end

local top = class_top()
if #top == 0 then
  if rcall('EXISTS', class_key) == 0 then return {'noclass'} end
  return {'none'}
end
-- The class's best shape when it is a candidate (no lookup needed); else the candidate with the best head, if
-- that head is within the slack of the class's very best.
local ncand = #ARGV - FIRST
local chosen, ready_key
for i = 1, ncand do
  if ARGV[FIRST + i] == top[1][1] then chosen, ready_key = ARGV[FIRST + i], KEYS[CANDIDATES + i] end
end
if not chosen and slack > 0 then
  local heads = rcall('ZMSCORE', heads_key, unpack(ARGV, FIRST + 1, FIRST + ncand))
  local chosen_score
  for i = 1, ncand do
    local score = tonumber(heads[i])
    if score and score <= top[1][2] + slack and (not chosen_score or score < chosen_score) then
      chosen, chosen_score, ready_key = ARGV[FIRST + i], score, KEYS[CANDIDATES + i]
    end
  end
  -- heads holds every class's shapes: a candidate must be checked as one of this class's own.
  if chosen and (rcall('SISMEMBER', class_key, chosen) == 0 or shape_paused(chosen)) then chosen = nil end
end
if not chosen then return {'retry', hint_of(top)} end
local best = chosen

-- Take jobs from this shape while they rank no worse than (the slack past) the best other shape's head:
-- a batch keeps the order.
local other = top[1]
if other[1] == best then other = top[2] end
local bound = other and other[2] + slack
-- The head was checked to be the best; any job after it must rank within the bound.
local ids, moved, first = {}, 0, true
repeat
  -- The first pop asks for ARGV[8] itself (the client's text of `want`): one formatting less per call.
  local popped = rcall('ZPOPMIN', ready_key, #ids == 0 and ARGV[8] or int_s(want - #ids))
  local taken, scores, stop = {}, {}, #popped < 2 * (want - #ids)
  for i = 1, #popped, 2 do
    if first or bound == nil or tonumber(popped[i + 1]) <= bound then
      scores[#taken + 1] = popped[i + 1]
      taken[#taken + 1] = popped[i]
    else
      rcall('ZADD', ready_key, popped[i + 1], popped[i])
      stop = true
    end
    first = false
  end
  if (pauses or gate) and #taken > 0 then
    -- A paused customer's jobs leave the line for `held`, each once (no scan); unhold.lua puts them back at
    -- their places when the customer is resumed. A job its customer's limit holds back leaves it for `limited`
    -- (limit.lua). At most 256 per call: a caller meeting a long held backlog gets 'retry' and calls again.
    local customers, paused = rcall('HMGET', customer_key, unpack(taken)), {}
    if pauses then
      local flags = {}
      for i = 1, #taken do flags[i] = 'customer:' .. (customers[i] or '-') end
      paused = rcall('HMGET', paused_key, unpack(flags))
    end
    for i, id in ipairs(taken) do
      if paused[i] then
        rcall('ZADD', held_key, 0, (customers[i] or '-') .. '|' .. best .. '|' .. id)
        moved = moved + 1
      elseif gate and not gate.admit(id, customers[i], best, scores[i]) then
        moved = moved + 1
      else
        ids[#ids + 1] = id
      end
    end
  else
    for _, id in ipairs(taken) do ids[#ids + 1] = id end
  end
until stop or #ids >= want or moved >= 256
if gate then gate.close() end
local head_score = refresh_head(ready_key, heads_key, best)
if #ids == 0 then
  -- heads named a shape with nothing waiting (corrected now): point the client at the new best.
  top = class_top()
  if #top == 0 then return {'none'} end
  return {'retry', hint_of(top)}
end
-- The hint after this claim: the same shapes, the claimed one re-ranked by its new head (or gone).
for i = #top, 1, -1 do
  if top[i][1] == best then table.remove(top, i) end
end
if head_score then
  local at = #top + 1
  for i = #top, 1, -1 do
    if top[i][2] > head_score then at = i end
  end
  table.insert(top, at, {best, head_score})
end

local deadline = now + lease_ms
local deadline_s = int_s(deadline)
local specs = rcall('HMGET', spec_key, unpack(ids))
-- The meta column serves the events only. Inside finish_claim.lua, the completed jobs' meta is read in the same
-- HMGET and their events go first (complete.lua's `shared.metas_for`).
local metas = {}
if mode ~= 'none' then
  local before = shared and shared.metas_for
  local wanted = ids
  if before then
    wanted = {unpack(before)}
    for _, id in ipairs(ids) do wanted[#wanted + 1] = id end
  end
  local all = rcall('HMGET', meta_key, unpack(wanted))
  if before then
    local done_metas = {}
    for i = 1, #before do done_metas[i] = all[i] end
    for i = 1, #ids do metas[i] = all[#before + i] end
    shared.metas_for = nil
    shared.with_metas(done_metas)
  else
    metas = all
  end
end
-- One job: HINCRBY. A batch: one read and one write of the attempts column.
local attempts = (#ids > 1) and rcall('HMGET', attempts_key, unpack(ids)) or nil
local states, owners, leases, tries, docs, entry = {}, {}, {}, {}, {}, nil
local reply = {'ok', hint_of(top), deadline, best}
for i, id in ipairs(ids) do
  local attempt
  if attempts then attempt = (tonumber(attempts[i]) or 0) + 1 else attempt = rcall('HINCRBY', attempts_key, id, '1') end
  local attempt_s = int_s(attempt)
  local at = 2 * i - 1
  states[at], states[at + 1] = id, 'claimed'
  tries[at], tries[at + 1] = id, attempt_s
  owners[at], owners[at + 1] = id, string.format('%s.%d|%s|%d', token, i, worker, now)  -- the time too: one call
  leases[at], leases[at + 1] = deadline_s, id
  if mode ~= 'none' then
    local service, created = string.match(metas[i], '^[^|]*|([^|]*)|([^|]*)|')
    local waited = int_s(now - created)
    docs[i] = {job = id, worker = worker, attempt = attempt_s, service = service, wait_ms = waited}
    if #ids == 1 then
      entry = {'job', id, 'worker', worker, 'attempt', attempt_s, 'service', service, 'wait_ms', waited}
    end
  end
  local r = #reply
  reply[r + 1], reply[r + 2], reply[r + 3] = id, specs[i], attempt
end
emit_many(events_key, mode, maxlen, 'job_claimed', queue, 'claimed', docs, entry)
write_states(shared, state_key, states)
if attempts then rcall('HSET', attempts_key, unpack(tries)) end
rcall('HSET', owner_key, unpack(owners))
rcall('ZADD', leases_key, unpack(leases))
return reply
