--[[
  Functions for job dependencies (docs/queue.md "Dependencies"). A job submitted with `after` waits, status
  'blocked', until every parent has finished. Each script that ends a job (complete, fail, cancel, requeue,
  release) calls `settle_children`, so the job's children learn of it in the same atomic step, at a cost of
  O(children) (and of their descendants that end with them), never a scan:

  - a parent completed (or failed, for a child whose policy is 'ignore'): one parent fewer to wait for; the last
    one releases the child: status pending, due at once (or at its run_at) in the delayed set, from where the
    completing client or the reaper moves it into its shape's ready index (requeue.lua);
  - a parent failed, died or was cancelled: the child ends at once, 'failed' (policy 'fail') or 'cancelled'
    (policy 'cancel'), with an error record naming the parent, and its own children follow, transitively.

  `k` names the keys: children  ZSET (score 0) 'parent|child', the edges of each unfinished parent
                      blocked   ZSET child -> parents not finished yet
                      parents   HASH child -> 'policy|start ms|parent,parent,...' (a job column)
                      delayed, state, info, done, counts, dead, errors, events.
  Uses ARGV[2..4] (queue name, events mode, maxlen: the common prefix) and the includes emit, finish and
  history, which the including script includes before this one (each once).
]]

-- One job's dependency record: policy, start ms, the list of parents ('a,b,c'); nil when it has none.
local function deps_of(k, child)
  local raw = rcall('HGET', k.parents, child)
  if not raw then return nil end
  local policy, start, list = string.match(raw, '^([^|]*)|([^|]*)|(.*)$')
  return policy, tonumber(start) or 0, list
end

-- A waiting child that ends without being released: out of `blocked`, its edges to the parents that have not
-- finished dropped (a later job that reuses its id must not inherit them).
local function unlink_child(k, child)
  local _, _, list = deps_of(k, child)
  local edges = {}
  for parent in string.gmatch(list or '', '[^,]+') do edges[#edges + 1] = parent .. '|' .. child end
  if #edges > 0 then rcall('ZREM', k.children, unpack(edges)) end
  rcall('ZREM', k.blocked, child)
end

-- End a waiting child because of its parent (status 'failed' or 'cancelled'), as `finish` ends any job.
local function end_child(k, child, status, parent, outcome, now, ttl_ms)
  local events_key, queue, mode, maxlen = k.events, ARGV[2], ARGV[3], ARGV[4]
  unlink_child(k, child)
  local said = outcome == 'dead' and 'died (dead-lettered)' or outcome
  local record = {message = 'parent ' .. parent .. ' ' .. said, kind = 'parent_' .. outcome,
    parent = parent, at = now}
  append_error_record(k.errors, child, record)
  finish(k, child, status, '', 0, now, ttl_ms)
  local fields, message = {'job', child, 'parent', parent}, ',"error":' .. cjson.encode(record)
  if status == 'cancelled' then
    emit(events_key, mode, maxlen, 'job_failed', queue, 'cancelled', fields, message)
  else
    emit(events_key, mode, maxlen, 'job_failed', queue, 'failed', fields, message)
  end
end

-- `parent` ended with `outcome` (completed, failed, dead, cancelled): settle its waiting children, and theirs
-- when they end too. Returns how many children were released (put in the delayed set, due).
local function settle_children(k, parent, outcome, now, ttl_ms)
  local events_key, queue, mode, maxlen = k.events, ARGV[2], ARGV[3], ARGV[4]
  local released = 0
  local todo, at = {parent, outcome}, 1
  while at < #todo do
    local p, out = todo[at], todo[at + 1]
    at = at + 2
    -- Ids hold no '|' and sort below '|' ('}' is the byte after it): this range is exactly p's edges.
    local low, high = '[' .. p .. '|', '(' .. p .. '}'
    local edges = rcall('ZRANGEBYLEX', k.children, low, high)
    if #edges > 0 then rcall('ZREMRANGEBYLEX', k.children, low, high) end
    for _, edge in ipairs(edges) do
      local child = string.sub(edge, #p + 2)
      if rcall('ZSCORE', k.blocked, child) then
        local policy, start = deps_of(k, child)
        if out == 'completed' or policy == 'ignore' then
          if tonumber(rcall('ZINCRBY', k.blocked, -1, child)) <= 0 then
            rcall('ZREM', k.blocked, child)
            rcall('HSET', k.state, child, 'pending')
            rcall('ZADD', k.delayed, math.max(now, start or 0), child)
            released = released + 1
            emit(events_key, mode, maxlen, 'job_submitted', queue, 'unblocked', {'job', child, 'parent', p})
          end
        else
          local status = policy == 'cancel' and 'cancelled' or 'failed'
          end_child(k, child, status, p, out, now, ttl_ms)
          todo[#todo + 1], todo[#todo + 2] = child, status
        end
      end
    end
  end
  return released
end
