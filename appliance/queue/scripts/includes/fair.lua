--[[
  Function for fair share across customers (docs/queue.md "Fair share"): the tag a newly submitted job ranks
  by, in score units (1 ms = 1000), before its priority offset. Start-time fair queueing, with a customer's own
  jobs kept as far apart as they arrived:

  - V, the shape's virtual time: the tag of the job next in line (the head's score plus the head's priority
    offset), so claims advance it by taking that job; a shape with nothing waiting follows the server clock
    (`arrival`, which carries the FIFO tie-break).
  - tag = max(V, last tag + 10 ms / weight, arrival + min(0, last tag - last arrival)), from the customer's last
    job (any shape). A customer that just arrived starts at V: next in line, not behind another customer's
    backlog. A customer with a backlog is paced at 10 ms of virtual time per job divided by its weight, so
    backlogged customers interleave in proportion to their weights. Jobs a customer submits apart keep at
    least their wall-clock spacing, so priority (a time offset) ages between them as before; a lead a customer
    built by flooding decays with the clock, a lag it was given behind a backlog is kept while it lasts.
    One customer's tags only grow: its own jobs stay FIFO.

  Returns the tag and the score of the shape's head (a number; nil when nothing waits), which tells submit.lua
  whether the new job ranks first (else heads needs no update).

  Cost: O(log N) (the head) + O(1), whatever the number of customers. Jobs without a customer form one
  default customer, '-' (not a valid customer id). Tags are whole score units, read and written as decimal
  text ('%d': a float format costs as much as a small command).
]]
local FAIR_QUANTUM = 10000  -- score units a weight-1 customer's tag moves per job (10 ms)

local function fair_tag(ready_key, meta_key, finish_key, weights_key, customer, arrival, step_ms)
  -- step_ms: the priority step as text (ARGV)
  if customer == '' then customer = '-' end
  local v, head_score = arrival, nil
  local head = rcall('ZRANGE', ready_key, '0', '0')[1]
  if head then
    -- The head's score is the one its meta holds (every ZADD to a ready index writes the meta's score, or the
    -- score ZPOPMIN gave back): read as the meta's text, not as a double Redis formats and strtod parses back.
    local meta = rcall('HGET', meta_key, head)
    local p, s
    if meta then p, s = string.match(meta, '^[^|]*|[^|]*|[^|]*|([^|]*)|[^|]*|[^|]*|([^|]+)$') end
    if not s then  -- a meta of another form (not written by this version): the index has the score
      p = meta and string.match(meta, '^[^|]*|[^|]*|[^|]*|([^|]*)|')
      s = rcall('ZSCORE', ready_key, head)
    end
    v = s + 0  -- arithmetic's own conversion: no call of tonumber (~700 instructions here)
    head_score = v
    -- A text-to-number conversion costs ~1k instructions: none for the usual priority 0.
    if p and p ~= '0' then v = v + tonumber(p) * tonumber(step_ms) * 1000 end
  end
  local tag = v
  local last = rcall('HGET', finish_key, customer)
  if last then
    local last_tag, last_arrival = string.match(last, '^([^|]*)|(.*)$')
    last_tag, last_arrival = last_tag + 0, last_arrival + 0
    local weight = tonumber(rcall('HGET', weights_key, customer)) or 1
    -- math.max(1, math.floor(FAIR_QUANTUM / weight + 0.5)), math.min(0, ...), math.max(...) as arithmetic:
    -- each call of a C function costs ~700 instructions here (docs/performance.md §6).
    local step = FAIR_QUANTUM / weight + 0.5
    step = step - step % 1
    if step < 1 then step = 1 end
    local lead = last_tag - last_arrival
    if lead > 0 then lead = 0 end
    local paced, spaced = last_tag + step, arrival + lead
    if paced > tag then tag = paced end
    if spaced > tag then tag = spaced end
  end
  rcall('HSET', finish_key, customer, string.format('%d|%d', tag, arrival))
  return tag, head_score
end
