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
    KEYS[11] delayed  ZSET id -> due, ms (children released by their last parent go there, due at once)
    KEYS[12] errors   HASH id -> error history
    KEYS[13] dead     ZSET id -> time of death
    KEYS[14] children ZSET (score 0) 'parent|child' of waiting children (includes/deps.lua)
    KEYS[15] blocked  ZSET child -> parents not finished yet
    KEYS[16] parents  HASH child -> policy|start ms|parents
    KEYS[17] charged   HASH id -> customer|pool its lease counts against (limits)
    KEYS[18] inflight  HASH customer[|pool] -> leased jobs of a limited customer
    KEYS[19] limited   ZSET (score 0) jobs a limit took out of line, by customer
    KEYS[20] limits_due  ZSET customer -> ms its limited jobs may go back in line

    ARGV[1]  channel prefix  ARGV[2]  queue name
    ARGV[3]  events mode    ARGV[4]  events maxlen
    ARGV[5]  result TTL, ms
    ARGV[6..]  one triple per job: job id, fencing token, result JSON

  Returns:
    one code per job, in order:
     1  completed
     8  completed, and it released waiting children (due now in the delayed set: the caller requeues them)
    -2  lease lost: the outcome is not written

  Emits: completed, one stream entry and one complete_job message for them all (includes/emit.lua `emit_many`):
  ids, duration and the result's size in bytes, never the result itself (a big message makes Redis drop every
  subscriber whose buffer it overflows; readers fetch the record)
]]
local rcall = redis.call
-- @include now
-- @include emit
-- @include owner
-- @include finish
-- @include history
-- @include deps
-- @include uncharge
-- @include states
-- @include int
-- @shared

local owner_key, leases_key, state_key, results_key, info_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local done_key, counts_key, events_key, cancels_key, meta_key = KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10]
-- Inside finish_claim.lua, its clock: one TIME for both transitions.
local now, queue, mode, maxlen = shared and shared.now or server_now(), ARGV[2], ARGV[3], ARGV[4]
local ttl_ms = ARGV[5] + 0  -- arithmetic's conversion: no call of tonumber (~700 instructions)
local now_s, expiry_s = int_s(now), int_s(now + ttl_ms)
local children_key = KEYS[14]

-- One read of every lease, then one write per column for the whole batch.
local asked = {}
for at = 6, #ARGV, 3 do asked[#asked + 1] = ARGV[at] end
if #asked == 0 then return {} end
local owners = rcall('HMGET', owner_key, unpack(asked))
local codes, ids, results, states, infos, dones, workers, claims = {}, {}, {}, {}, {}, {}, {}, {}
for i, id in ipairs(asked) do
  local worker, claimed, claimed_s = parse_lease(owners[i], ARGV[4 + 3 * i], '')
  if worker and not workers[id] then
    codes[i] = 1
    ids[#ids + 1], workers[id], claims[id] = id, worker, claimed
    local n = #results
    results[n + 1], results[n + 2] = id, ARGV[5 + 3 * i]
    states[n + 1], states[n + 2] = id, 'completed'
    infos[n + 1], infos[n + 2] = id, worker .. '|' .. claimed_s .. '|' .. now_s
    dones[n + 1], dones[n + 2] = expiry_s, id
  else
    codes[i] = -2
  end
end
if #ids == 0 then return codes end
rcall('HDEL', owner_key, unpack(ids))
-- One EXISTS for the three keys that stay empty while no job is charged against a limit, has its cancellation
-- requested or waits for a parent: none of their calls is made then.
-- Inside finish_claim.lua, its one EXISTS covers these (`shared.quiet`).
local others = not (shared and shared.quiet)
  and rcall('EXISTS', KEYS[#KEYS - 3], cancels_key, children_key) > 0  -- charged: uncharge_keys()
if others then
  uncharge(uncharge_keys(), ids, now)
  rcall('HDEL', cancels_key, unpack(ids))
end
rcall('ZREM', leases_key, unpack(ids))
rcall('HSET', results_key, unpack(results))
write_states(shared, state_key, states)
rcall('HSET', info_key, unpack(infos))
rcall('ZADD', done_key, unpack(dones))
rcall('HINCRBY', counts_key, 'completed', int_s(#ids))
-- Children settle after the events (their `unblocked` follows their parent's `completed`): once per batch.
local parents = others and rcall('EXISTS', children_key) == 1
if mode ~= 'none' then
  local function emit_completed(metas)
    local docs, entry = {}, nil
    for i, id in ipairs(ids) do
      local service = string.match(metas[i] or '', '^[^|]*|([^|]*)|') or ''
      local worker, took, size = workers[id], int_s(now - claims[id]), int_s(#results[2 * i])
      docs[i] = {job = id, worker = worker, service = service, duration_ms = took, result_bytes = size}
      if #ids == 1 then
        entry = {'job', id, 'worker', worker, 'service', service, 'duration_ms', took, 'result_bytes', size}
      end
    end
    emit_many(events_key, mode, maxlen, 'complete_job', queue, 'completed', docs, entry)
  end
  if shared and not parents then
    -- Inside finish_claim.lua: the claim reads these jobs' meta with its own jobs' (one HMGET) and emits these
    -- events first; whatever claims nothing hands them back to finish_claim.lua, which reads and emits them.
    shared.metas_for, shared.with_metas = ids, emit_completed
  else
    emit_completed(rcall('HMGET', meta_key, unpack(ids)))
  end
end
if parents then
  -- The keys with which a completion settles the job's waiting children (includes/deps.lua).
  local deps = {children = children_key, blocked = KEYS[15], parents = KEYS[16], delayed = KEYS[11],
    errors = KEYS[12], dead = KEYS[13], state = state_key, info = info_key, done = done_key, counts = counts_key,
    events = events_key}
  for i, id in ipairs(asked) do
    if codes[i] == 1 and settle_children(deps, id, 'completed', now, ttl_ms) > 0 then codes[i] = 8 end
  end
end
return codes
