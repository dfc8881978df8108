--[[
  Function to end a job: its final status, who ran it and when, its record's expiry, the totals, and for a
  dead job its place in the dead letter. `k` names the keys: state, info, done, counts, dead.
]]
local function finish(k, id, status, worker, claimed, now, ttl_ms)
  rcall('HSET', k.state, id, status)
  rcall('HSET', k.info, id, worker .. '|' .. claimed .. '|' .. now)
  rcall('ZADD', k.done, now + ttl_ms, id)
  rcall('HINCRBY', k.counts, status, 1)
  if status == 'dead' then rcall('ZADD', k.dead, now, id) end
end
