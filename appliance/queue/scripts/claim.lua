--[[
  Claim up to N of the best waiting jobs a worker class can run, and lease them.

  A worker class is a set of shape ids (the `class` SET, written by the client from its shape list). The claim
  walks `heads` (shape -> best waiting score, over every shape) from the best, and the first members the class
  holds are the class's best shape and its runner-up. The client names, as its guess, the shape whose ready
  index it passes in KEYS; when the best shape is another one the script changes nothing and answers
  'retry' with that shape, so every key it touches is declared. Each success returns the next best shape as a
  hint, so a client following hints rarely retries.

  Cost: O(log S + W) on `heads` (S shapes waiting, W = how many shapes of other classes rank ahead of the
  class's best and runner-up), O(log N + n) on one ready index, then O(1) per claimed job. It does not grow
  with the number of shapes the worker serves, nor with queue depth.

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
    KEYS[11] ready     ZSET of the guessed shape: id -> score

    ARGV[1]  unused          ARGV[2]  queue name
    ARGV[3]  events mode      ARGV[4]  events maxlen
    ARGV[5]  worker id        ARGV[6]  fencing token prefix (random; job i of the batch gets prefix.i)
    ARGV[7]  lease, ms        ARGV[8]  guessed shape id
    ARGV[9]  most jobs to claim (n >= 1)

  Returns:
    {'ok', hint, deadline ms, shape, id, job JSON, attempt, id, job JSON, attempt, ...}  (1..n jobs, all of
       `shape`, in score order; hint = the class's best shape now, or '' when none is known to wait)
    {'retry', shape}  the class's best job waits in `shape`, not in the guess: nothing was changed
    {'none'}          no job waits in any of the class's shapes
    {'noclass'}       the class SET does not exist (never written, or expired): write it and call again

  Emits: claimed (channel job_claimed), one per job
]]
local rcall = redis.call
-- @include now
-- @include emit
-- @include heads

local heads_key, class_key, spec_key, meta_key, state_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local attempts_key, owner_key, leases_key, counts_key = KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local events_key, ready_key = KEYS[10], KEYS[11]
local queue, mode, maxlen = ARGV[2], ARGV[3], ARGV[4]
local worker, token, lease_ms, guess = ARGV[5], ARGV[6], tonumber(ARGV[7]), ARGV[8]
local want = tonumber(ARGV[9])

-- Walk heads from the best score in growing pages; stop at the class's best shape and its runner-up.
local function class_best()
  local best
  local start, page = 0, 16
  while true do
    local entries = rcall('ZRANGE', heads_key, start, start + page - 1, 'WITHSCORES')
    local n = #entries / 2
    if n == 0 then break end
    local members = {}
    for i = 1, n do members[i] = entries[2 * i - 1] end
    local held = rcall('SMISMEMBER', class_key, unpack(members))
    for i = 1, n do
      if held[i] == 1 then
        if best then return best, members[i], tonumber(entries[2 * i]) end
        best = members[i]
      end
    end
    if n < page then break end
    start, page = start + page, math.min(page * 4, 1024)
  end
  return best, nil, nil
end

local best, runner_up, runner_up_score = class_best()
if not best then
  if rcall('EXISTS', class_key) == 0 then return {'noclass'} end
  return {'none'}
end
if best ~= guess then return {'retry', best} end

-- Take jobs from this shape while they rank no worse than the runner-up's best: a batch keeps the order.
local popped = rcall('ZPOPMIN', ready_key, want)
local ids = {}
for i = 1, #popped, 2 do
  if #ids == 0 or runner_up_score == nil or tonumber(popped[i + 1]) <= runner_up_score then
    ids[#ids + 1] = popped[i]
  else
    rcall('ZADD', ready_key, popped[i + 1], popped[i])
  end
end
local head_score = refresh_head(ready_key, heads_key, best)
if #ids == 0 then
  -- heads named a shape with nothing waiting (corrected now): point the client at the new best.
  best = class_best()
  if not best then return {'none'} end
  return {'retry', best}
end
local hint = best
if head_score == nil or (runner_up_score ~= nil and runner_up_score < head_score) then
  hint = runner_up or ''
end

local now = server_now()
local deadline = now + lease_ms
local metas, specs = rcall('HMGET', meta_key, unpack(ids)), rcall('HMGET', spec_key, unpack(ids))
local states, owners, leases = {}, {}, {}
local reply = {'ok', hint, deadline, best}
for i, id in ipairs(ids) do
  local attempt = rcall('HINCRBY', attempts_key, id, 1)
  local at = 2 * i - 1
  states[at], states[at + 1] = id, 'claimed'
  owners[at], owners[at + 1] = id, token .. '.' .. i .. '|' .. worker .. '|' .. now
  leases[at], leases[at + 1] = deadline, id
  local service, created = string.match(metas[i], '^[^|]*|([^|]*)|([^|]*)|')
  emit(events_key, mode, maxlen, 'job_claimed', queue, 'claimed',
    {'job', id, 'worker', worker, 'attempt', attempt, 'service', service, 'wait_ms', now - tonumber(created)})
  local r = #reply
  reply[r + 1], reply[r + 2], reply[r + 3] = id, specs[i], attempt
end
rcall('HSET', state_key, unpack(states))
rcall('HSET', owner_key, unpack(owners))
rcall('ZADD', leases_key, unpack(leases))
return reply
