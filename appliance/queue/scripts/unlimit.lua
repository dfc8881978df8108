--[[
  Put a customer's jobs that a limit held back (claim.lua, limit.lua) back in line, best first, as many as its
  limits let start now: its free in-flight slots (fleet-wide, and summed over the pools it caps) and the whole
  tokens in its rate bucket; every one when it has no limit any more. Each goes back at its original place
  (the score in its meta) and wakes one idle worker of its shape; a job no longer waiting (cancelled
  meanwhile) only leaves `limited`. A customer with pool caps but no fleet-wide cap gets one more than its
  capped pools' free slots: a job only a pool cap held may run on a worker of another pool. Then `limits_due`
  says when to come back: a token's time when the rate binds, now when this call stopped short (batch full, or
  a held job of a shape the caller did not pass), and no entry when a cap binds (a lease ending puts the
  customer back) or nothing is held any more.

  The client lists the customer's best held members (ZRANGEBYLEX) and passes their shapes, whose ready and
  idle keys follow in KEYS.

  Input:
    KEYS[1]  limits      HASH of per-customer limits
    KEYS[2]  inflight    HASH customer[|pool] -> leased jobs of a limited customer
    KEYS[3]  buckets     HASH customer -> tokens|ms of its start-rate bucket
    KEYS[4]  limited     ZSET (score 0) '<customer>|<score>|<shape>|<id>'
    KEYS[5]  limits_due  ZSET customer -> ms its limited jobs may go back in line
    KEYS[6]  state       HASH id -> status
    KEYS[7]  meta        HASH id -> shape|service|created_ms|priority|max_retries|timeout_ms|score
    KEYS[8]  heads       ZSET shape -> best waiting score
    KEYS[9]  waiting     HASH idle worker -> hub channel of its process
    KEYS[10..9+2S]       the ready ZSET and the idle ZSET of each of the S shapes of ARGV[8..7+S], in pairs

    ARGV[1]  channel prefix  ARGV[2]  queue name
    ARGV[3]  events mode    ARGV[4]  events maxlen
    ARGV[5]  customer
    ARGV[6]  wake_one's how: '1' (PUBLISH), 's' (SPUBLISH, a Cluster) or '0'
    ARGV[7]  most jobs to put back in this call
    ARGV[8..7+S]  shape ids

  Returns: {jobs put back in line, 1 when the customer is due again at once (call again), else 0}
]]
local rcall = redis.call
-- @include now
-- @include meta
-- @include in_line

local limits_key, inflight_key, buckets_key, limited_key, due_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local state_key, meta_key, heads_key, waiting_key = KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local c, how, most = ARGV[5], ARGV[6], tonumber(ARGV[7])
local now = server_now()
local lines = {}
for i = 8, #ARGV do
  local at = 9 + 2 * (i - 7)
  lines[ARGV[i]] = {state = state_key, ready = KEYS[at - 1], heads = heads_key, idle = KEYS[at],
    waiting = waiting_key}
end

-- How many may start now, and whether the rate is what bounds it.
local allow, rate_bound = most, false
local v = rcall('HMGET', limits_key, c .. '|cap', c .. '|pools', c .. '|rate')
local n = rcall('HMGET', inflight_key, c)
if v[1] then allow = math.min(allow, tonumber(v[1]) - (tonumber(n[1]) or 0)) end
if v[2] and v[2] ~= '' then
  local free = 0
  for pool in string.gmatch(v[2], '[^,]+') do
    local cap = tonumber(rcall('HGET', limits_key, c .. '|pool|' .. pool))
    if cap then free = free + math.max(0, cap - (tonumber(rcall('HGET', inflight_key, c .. '|' .. pool)) or 0)) end
  end
  -- One more than the capped pools' free slots: a job only a pool cap held may run on another pool's worker,
  -- whose lease end then frees the next (without a fleet cap, nothing else bounds them there).
  if not v[1] then free = free + 1 end
  allow = math.min(allow, free)
end
local rate, tokens
if v[3] then
  local r, burst = string.match(v[3], '^([^|]*)|(.*)$')
  rate, tokens = tonumber(r), tonumber(burst)
  local b = rcall('HGET', buckets_key, c)
  if b then
    local t, ms = string.match(b, '^([^|]*)|(.*)$')
    tokens = math.min(tokens, tonumber(t) + math.max(0, now - tonumber(ms)) * rate / 1000)
  end
  if math.floor(tokens) < allow then allow, rate_bound = math.floor(tokens), true end
end

local back, short, lo, hi = 0, false, '[' .. c .. '|', '(' .. c .. '}'
while back < allow and not short do
  local members = rcall('ZRANGEBYLEX', limited_key, lo, hi, 'LIMIT', 0, allow - back)
  if #members == 0 then break end
  for _, member in ipairs(members) do
    local shape, id = string.match(member, '^[^|]*|[^|]*|([^|]*)|(.*)$')
    local line = lines[shape]
    if not line then short = true break end
    rcall('ZREM', limited_key, member)
    local meta = rcall('HGET', meta_key, id)
    if meta and rcall('HGET', state_key, id) == 'pending' then
      back_in_line(line, id, shape, parse_meta(meta).score, how)
      back = back + 1
    end
  end
end

local more = 0
if #rcall('ZRANGEBYLEX', limited_key, lo, hi, 'LIMIT', 0, 1) == 0 then
  rcall('ZREM', due_key, c)
elseif short or (back >= most and not rate_bound) then
  rcall('ZADD', due_key, now, c)
  more = 1
elseif rate_bound then
  rcall('ZADD', due_key, now + math.max(1, math.ceil((back + 1 - tokens) * 1000 / rate)), c)
else
  rcall('ZREM', due_key, c)
end
return {back, more}
