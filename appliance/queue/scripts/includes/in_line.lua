--[[
  Function to put a job back in line ("back in line", one definition for submit, fail, release and requeue):
  status pending, the progress of an earlier attempt dropped, the job in its shape's ready index at `score`
  and the shape's head lowered to it when it now ranks first. `k` names the keys: state (nil when the caller
  set the status already), progress (nil when there is none yet), ready, heads (nil when the caller knows the
  job does not rank first: the shape's entry is its ready index's best score, at or below `score`), and idle
  and waiting for `wake_one`. `wake` (the `how` of wake_one) wakes one idle worker of the shape; nil when the
  caller wakes once for a batch (requeue) or later (submit). Returns 1 when the shape was not in heads (ZADD
  added it), else 0.
]]
-- @include wake_one
local function back_in_line(k, id, shape, score, wake)
  if k.state then rcall('HSET', k.state, id, 'pending') end
  if k.progress then rcall('HDEL', k.progress, id) end
  rcall('ZADD', k.ready, score, id)
  local added = k.heads and rcall('ZADD', k.heads, 'LT', score, shape) or 0
  if wake ~= nil then wake_one(k, shape, wake) end
  return added
end
