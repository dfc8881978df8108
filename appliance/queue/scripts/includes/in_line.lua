--[[
  Function to put a job back in line ("back in line", one definition for submit, fail, release and requeue):
  status pending, the progress of an earlier attempt dropped, the job in its shape's ready index at `score`
  and the shape's head lowered to it when it now ranks first. `k` names the keys: state, progress (nil when
  there is none yet), ready, heads, and idle and waiting for `wake_one`. `wake` (the `how` of wake_one) wakes
  one idle worker of the shape; nil when the caller wakes once for a batch (requeue) or later (submit).
]]
-- @include wake_one
local function back_in_line(k, id, shape, score, wake)
  rcall('HSET', k.state, id, 'pending')
  if k.progress then rcall('HDEL', k.progress, id) end
  rcall('ZADD', k.ready, score, id)
  rcall('ZADD', k.heads, 'LT', score, shape)
  if wake ~= nil then wake_one(k, shape, wake) end
end
