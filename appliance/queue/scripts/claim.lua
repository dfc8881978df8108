--[[
  Claim the best waiting job across the worker's shapes and lease it.

  Cost: one ZMSCORE over the worker's K shapes, then O(log N) on one ready index; never scans jobs.

  Input:
    KEYS[1]  heads     ZSET shape -> best waiting score
    KEYS[2]  spec      HASH id -> job JSON
    KEYS[3]  meta      HASH id -> shape|service|created_ms|...
    KEYS[4]  state     HASH id -> status
    KEYS[5]  attempts  HASH id -> attempts so far
    KEYS[6]  owner     HASH id -> token|worker|claimed_ms
    KEYS[7]  leases    ZSET id -> lease deadline, ms
    KEYS[8]  counts    HASH of totals
    KEYS[9]  events    STREAM
    KEYS[10..9+K]      ready ZSETs of the worker's shapes, in the order of ARGV[8..7+K]

    ARGV[1]  unused          ARGV[2]  queue name
    ARGV[3]  events mode      ARGV[4]  events maxlen
    ARGV[5]  worker id        ARGV[6]  fencing token (random)
    ARGV[7]  lease, ms
    ARGV[8..7+K]  shape ids

  Returns:
    nil when no job is waiting in any of the shapes, else
    {job id, job JSON, attempt, lease deadline ms, shape id}

  Emits: claimed (channel job_claimed)
]]
local rcall = redis.call
-- @include now
-- @include emit
-- @include heads

local heads_key, spec_key, meta_key, state_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local attempts_key, owner_key, leases_key, counts_key, events_key = KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local now, queue, mode, maxlen = server_now(), ARGV[2], ARGV[3], ARGV[4]
local worker, token, lease_ms = ARGV[5], ARGV[6], tonumber(ARGV[7])
local nshapes = #KEYS - 9
if nshapes < 1 then return nil end

local scores = rcall('ZMSCORE', heads_key, unpack(ARGV, 8, 7 + nshapes))
-- Pick the lowest head score; retry with the next shape if a head entry turns out stale.
for _ = 1, nshapes do
  local best, best_score = nil, nil
  for i = 1, nshapes do
    local s = scores[i]
    if s then
      s = tonumber(s)
      if best_score == nil or s < best_score then best, best_score = i, s end
    end
  end
  if not best then return nil end

  local ready_key, shape = KEYS[9 + best], ARGV[7 + best]
  local popped = rcall('ZPOPMIN', ready_key)
  refresh_head(ready_key, heads_key, shape)
  if popped[1] then
    local id = popped[1]
    rcall('HSET', state_key, id, 'claimed')
    local attempt = rcall('HINCRBY', attempts_key, id, 1)
    local deadline = now + lease_ms
    rcall('HSET', owner_key, id, token .. '|' .. worker .. '|' .. now)
    rcall('ZADD', leases_key, deadline, id)
    local meta = rcall('HGET', meta_key, id)
    local service, created = string.match(meta, '^[^|]*|([^|]*)|([^|]*)|')
    emit(events_key, mode, maxlen, 'job_claimed', queue, 'claimed',
      {'job', id, 'worker', worker, 'attempt', attempt, 'service', service, 'wait_ms', now - tonumber(created)})
    return {id, rcall('HGET', spec_key, id), attempt, deadline, shape}
  end
  scores[best] = false
end
return nil
