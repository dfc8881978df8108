--[[
  Function to end the in-flight charge of jobs whose lease ended (complete, fail, release, requeue; see
  limit.lua): each charged job counts one less for its customer (and its pool), and a customer with jobs a limit
  holds back is due at once in `limits_due`, so the next claim (or the reaper) puts them back in line.
  `k` names the keys: charged, inflight, limited, limits_due. One HMGET when no job of the batch is charged.
]]
-- The keys, the last four of every script that ends a lease (so keys another change adds before them do not
-- renumber this call): charged, inflight, limited, limits_due.
local function uncharge_keys()
  local n = #KEYS
  return {charged = KEYS[n - 3], inflight = KEYS[n - 2], limited = KEYS[n - 1], limits_due = KEYS[n]}
end

local function uncharge(k, ids, now)
  if #ids == 0 then return end
  local charges = rcall('HMGET', k.charged, unpack(ids))
  local ended = {}
  for i, charge in ipairs(charges) do
    if charge then
      ended[#ended + 1] = ids[i]
      local c, pool = string.match(charge, '^([^|]*)|(.*)$')
      local fields = {c}
      if pool ~= '' then fields[2] = c .. '|' .. pool end
      for _, field in ipairs(fields) do
        if rcall('HINCRBY', k.inflight, field, -1) <= 0 then rcall('HDEL', k.inflight, field) end
      end
      if #rcall('ZRANGEBYLEX', k.limited, '[' .. c .. '|', '(' .. c .. '}', 'LIMIT', 0, 1) > 0 then
        rcall('ZADD', k.limits_due, now, c)
      end
    end
  end
  if #ended > 0 then rcall('HDEL', k.charged, unpack(ended)) end
end
