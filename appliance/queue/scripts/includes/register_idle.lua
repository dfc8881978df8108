--[[
  Function to register a worker as idle (idle.lua; finish_claim.lua when its claim took nothing and the worker
  asked): in the idle set of each shape it serves, so that the next job of any of them wakes it (wake_one) -
  unless a job already waits in one of them (its shape and the queue not paused), checked in the same step, so
  no job slips in between the check and the registration unseen; then nothing is written.
  `k` names the keys: heads, waiting, paused, and idle (a list: the idle sets of `shapes`, in order). `now`: the
  caller's clock, or nil (read here, once the check passed). Returns 1 when registered, 0 when a job waits.
]]
local function register_idle(k, worker, channel, shapes, now)
  local heads = rcall('ZMSCORE', k.heads, unpack(shapes))
  local pauses = rcall('HLEN', k.paused) > 0
  if not (pauses and rcall('HEXISTS', k.paused, 'queue') == 1) then
    for i = 1, #shapes do
      if heads[i] and not (pauses and rcall('HEXISTS', k.paused, 'shape:' .. shapes[i]) == 1) then return 0 end
    end
  end
  now = now or server_now()
  rcall('HSET', k.waiting, worker, channel)
  for _, key in ipairs(k.idle) do
    rcall('ZADD', key, now, worker)
  end
  return 1
end
