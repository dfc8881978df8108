--[[
  Function to wake ONE idle worker that serves `shape` (submit, fail, release, requeue, wake): pop the longest
  idle registration from the shape's idle set until one is live, consume it and tell that worker's process on
  its hub channel (`worker|shape`). A worker registered for several shapes sits in each of their sets; once it
  was woken through one (or left), its other entries are stale: dropped here, each at most once. Unless `how`
  is '0', a registration whose process no longer listens (the message reached no one: the process died) is
  dropped and the next one tried; a Cluster passes 's' (SPUBLISH, whose count is the shard's subscribers).
  `k` names the keys: idle (the shape's idle set), waiting. Returns the worker woken, or nil when none waits.
]]
local function wake_one(k, shape, how)
  -- how: '1' PUBLISH, and drop a registration nobody heard; 's' the same by SPUBLISH (a Cluster: the hub channel
  -- carries the queue's hash tag, so only the queue's shard is told, and its count is exact); '0' PUBLISH, keep
  -- the registration consumed whether or not anyone heard.
  while true do
    local popped = rcall('ZPOPMIN', k.idle)
    if #popped == 0 then return nil end
    local worker = popped[1]
    local channel = rcall('HGET', k.waiting, worker)
    if channel then
      rcall('HDEL', k.waiting, worker)
      local heard = rcall(how == 's' and 'SPUBLISH' or 'PUBLISH', channel, worker .. '|' .. shape)
      if heard > 0 or how == '0' then return worker end
    end
  end
end
