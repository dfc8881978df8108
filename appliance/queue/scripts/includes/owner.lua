--[[
  Functions to read a lease: owner column value token|worker|claimed_ms.
  Both return worker, claimed_ms (and its text) when `token` owns it (or, with token '', when `worker` does),
  else nil.
]]
local function parse_lease(own, token, worker)
  if not own then return nil end
  local t, w, claimed = string.match(own, '^([^|]*)|(.*)|([^|]*)$')
  if token ~= '' then
    if t ~= token then return nil end
  elseif w ~= worker then
    return nil
  end
  return w, tonumber(claimed), claimed
end

local function lease_of(owner_key, id, token, worker)
  return parse_lease(rcall('HGET', owner_key, id), token, worker)
end
