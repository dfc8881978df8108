--[[
  Function to put a job back in line ("back in line", one definition for submit, fail, release and requeue):
  status pending, the progress of an earlier attempt dropped, the job in its shape's ready index at `score`
  and the shape's head lowered to it when it now ranks first. `k` names the keys: state, progress (nil when
  there is none yet), ready, heads. `wake` is the shape's wake channel to tell idle workers, or nil when the
  caller publishes once for a batch (requeue) or later (submit).
]]
local function back_in_line(k, id, shape, score, wake)
  rcall('HSET', k.state, id, 'pending')
  if k.progress then rcall('HDEL', k.progress, id) end
  rcall('ZADD', k.ready, score, id)
  rcall('ZADD', k.heads, 'LT', score, shape)
  if wake then rcall('PUBLISH', wake, id) end
end
