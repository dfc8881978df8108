--[[
  Functions to read a lease: owner column value token|worker|claimed_ms (the worker id may hold '|': the token
  ends at the first '|', claimed_ms starts after the last).
  Both return worker, claimed_ms (and its text) when `token` owns it (or, with token '', when `worker` does),
  else nil; parse_lease with `text` set returns worker and claimed_ms's text only (no tonumber).
  Plain finds, not the pattern '^([^|]*)|(.*)|([^|]*)$', whose `(.*)` runs to the end and backs up (issue 14,
  docs/performance.md §1).
]]
local function parse_lease(own, token, worker, text)
  if not own then return nil end
  local find = string.find
  local a = find(own, '|', 1, true)
  if not a then return nil end
  -- The last '|': searched from 15 bytes before the end (a claimed_ms of up to 14 digits), then onwards; the
  -- pattern when it lies further back.
  local from = #own - 15
  if from <= a then from = a + 1 end
  local b = find(own, '|', from, true)
  if b then
    local after = find(own, '|', b + 1, true)
    while after do b, after = after, find(own, '|', after + 1, true) end
  else
    b = string.match(own, '^[^|]*|.*()|')
    if not b then return nil end
  end
  if token ~= '' then
    if a ~= #token + 1 or find(own, token, 1, true) ~= 1 then return nil end
  end
  local w = string.sub(own, a + 1, b - 1)
  if token == '' and w ~= worker then return nil end
  local claimed = string.sub(own, b + 1)
  if text then return w, claimed end
  return w, tonumber(claimed), claimed
end

local function lease_of(owner_key, id, token, worker)
  return parse_lease(rcall('HGET', owner_key, id), token, worker)
end
