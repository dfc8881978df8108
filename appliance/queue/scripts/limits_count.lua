--[[
  Count a customer's jobs in flight that its limits do not count yet: the claim charges a customer's jobs only
  while it has a limit, so when one is set, the jobs it already runs are charged here (each at the pool of
  the worker that holds it, from the workers' registry), in one step with no claim between. Then the customer
  is due, so jobs its limits held back go back in line if the new limits allow. Cost: O(jobs in flight), once
  per change of limits.

  Input:
    KEYS[1]  limits      HASH of per-customer limits
    KEYS[2]  owner       HASH id -> token|worker|claimed_ms (every leased job)
    KEYS[3]  customer    HASH id -> customer (absent: '-')
    KEYS[4]  charged     HASH id -> customer|pool its lease counts against
    KEYS[5]  inflight    HASH customer[|pool] -> leased jobs of a limited customer
    KEYS[6]  workers     HASH worker id -> registration JSON (capabilities.pool)
    KEYS[7]  limits_due  ZSET customer -> ms its limited jobs may go back in line

    (no common prefix: nothing here publishes or emits)
    ARGV[1]  customer

  Returns: the customer's jobs in flight now (0 when it has no limit: nothing is counted)
]]
local rcall = redis.call
-- @include now

local limits_key, owner_key, customer_key, charged_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local inflight_key, workers_key, due_key = KEYS[5], KEYS[6], KEYS[7]
local c = ARGV[1]
rcall('ZADD', due_key, server_now(), c)
local v = rcall('HMGET', limits_key, c .. '|cap', c .. '|pools', c .. '|rate')
if not (v[1] or v[2] or v[3]) then return 0 end

local function pool_of(worker)
  local raw = worker and rcall('HGET', workers_key, worker)
  if not raw then return '' end
  local ok, record = pcall(cjson.decode, raw)
  local pool = ok and type(record) == 'table' and type(record.capabilities) == 'table' and record.capabilities.pool
  return type(pool) == 'string' and pool or ''
end

local leased = rcall('HGETALL', owner_key)
for start = 1, #leased, 1000 do
  local ids, owners = {}, {}
  for i = start, math.min(start + 999, #leased - 1), 2 do
    ids[#ids + 1], owners[#owners + 1] = leased[i], leased[i + 1]
  end
  if #ids > 0 then
    local customers = rcall('HMGET', customer_key, unpack(ids))
    local charges = rcall('HMGET', charged_key, unpack(ids))
    for i, id in ipairs(ids) do
      if (customers[i] or '-') == c and not charges[i] then
        local pool = pool_of(string.match(owners[i], '^[^|]*|(.*)|[^|]*$'))
        rcall('HSET', charged_key, id, c .. '|' .. pool)
        rcall('HINCRBY', inflight_key, c, 1)
        if pool ~= '' then rcall('HINCRBY', inflight_key, c .. '|' .. pool, 1) end
      end
    end
  end
end
return tonumber(rcall('HGET', inflight_key, c)) or 0
