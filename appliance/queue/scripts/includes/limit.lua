--[[
  Functions for per-customer limits in the claim (docs/queue.md "Per-customer limits"): jobs in flight,
  fleet-wide and on one pool's workers, and a start rate (token bucket on the server clock). `k` names the
  keys: limits, inflight, charged, buckets, limited, limits_due.

  `limit_gate(k, pool, now)` returns a gate for one claim call; `gate.admit(id, customer, shape, score)` says
  whether the job may start now. It charges an admitted job of a limited customer (`charged` id ->
  customer|pool, counted in `inflight` until its lease ends: uncharge.lua) and takes a token from its bucket.
  A job a limit holds back leaves the line for `limited`, under its customer in score order, and the customer
  is put in `limits_due` when a token will have accrued (a cap waits for a lease to end instead).
  `gate.close()` writes the buckets back. Cost: one HMGET of the customer's limits and O(1) per job; an
  O(log N) move per held job, each held job once until its customer can take it.
]]
-- @include limited

local function limit_gate(k, pool, now)
  local gate, seen = {}, {}
  local function state_of(c)
    local st = seen[c]
    if st then return st end
    local v = rcall('HMGET', k.limits, c .. '|cap', c .. '|pool|' .. pool, c .. '|rate', c .. '|pools')
    st = {cap = tonumber(v[1]), pcap = pool ~= '' and tonumber(v[2]) or nil}
    -- A customer with any limit is charged on every worker: each of its lease ends then looks for held jobs
    -- (a job a pool cap held may be run by a worker of another pool, and its end must free the next).
    st.limited = v[1] or v[3] or v[4]
    st.fleet, st.pooled = 0, 0
    if st.cap and st.pcap then
      local n = rcall('HMGET', k.inflight, c, c .. '|' .. pool)
      st.fleet, st.pooled = tonumber(n[1]) or 0, tonumber(n[2]) or 0
    elseif st.cap then
      st.fleet = tonumber(rcall('HGET', k.inflight, c)) or 0
    elseif st.pcap then
      st.pooled = tonumber(rcall('HGET', k.inflight, c .. '|' .. pool)) or 0
    end
    if v[3] then
      local rate, burst = string.match(v[3], '^([^|]*)|(.*)$')
      st.rate, st.burst = tonumber(rate), tonumber(burst)
      local b = rcall('HGET', k.buckets, c)
      local tokens, at = st.burst, now
      if b then
        local t, ms = string.match(b, '^([^|]*)|(.*)$')
        tokens, at = tonumber(t), tonumber(ms)
      end
      st.tokens = math.min(st.burst, tokens + math.max(0, now - at) * st.rate / 1000)
    end
    seen[c] = st
    return st
  end

  function gate.admit(id, customer, shape, score)
    local c = customer or '-'
    local st = state_of(c)
    if not st.limited then return true end
    local held
    if st.cap and st.fleet >= st.cap then
      held = 'cap'
    elseif st.pcap and st.pooled >= st.pcap then
      held = 'cap'
    elseif st.rate and st.tokens < 1 then
      held = 'rate'
    end
    if held then
      rcall('ZADD', k.limited, 0, limited_member(c, score, shape, id))
      if held == 'rate' then
        rcall('ZADD', k.limits_due, 'LT', now + math.ceil((1 - st.tokens) * 1000 / st.rate), c)
      end
      return false
    end
    if st.rate then st.tokens = st.tokens - 1 end
    st.fleet, st.pooled = st.fleet + 1, st.pooled + 1
    rcall('HINCRBY', k.inflight, c, 1)
    if pool ~= '' then rcall('HINCRBY', k.inflight, c .. '|' .. pool, 1) end
    rcall('HSET', k.charged, id, c .. '|' .. pool)
    return true
  end

  function gate.close()
    for c, st in pairs(seen) do
      if st.rate then rcall('HSET', k.buckets, c, string.format('%.6f|%.0f', st.tokens, now)) end
    end
  end

  return gate
end
