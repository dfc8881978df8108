--[[
  A worker with a free slot found nothing to claim: register it as idle in the idle set of each shape it serves,
  so that the next job of any of them wakes it (one worker per job, oldest idle first: wake_one) - unless a job
  already waits in one of them, checked in the same step, so no job slips in between the check and the
  registration unseen.

  Cost: O(S log N) for a worker of S shapes (N idle workers per shape); one call each time the worker runs out
  of work, none while it stays idle.

  Input:
    KEYS[1]  heads     ZSET shape -> best waiting score
    KEYS[2]  waiting   HASH idle worker -> hub channel of its process
    KEYS[3..2+S]       idle ZSETs of the worker's S shapes, in the order of ARGV[3..2+S]

    ARGV[1]  worker id
    ARGV[2]  hub channel of the worker's process (where wake-ups for it go)
    ARGV[3..2+S]  the worker's shape ids (S >= 1)

  Returns: 1 when registered (the worker waits for a wake-up), or 0 when a job waits in one of its shapes
    (claim now; nothing was written)
]]
local rcall = redis.call
-- @include now

local heads_key, waiting_key, worker = KEYS[1], KEYS[2], ARGV[1]
local heads = rcall('ZMSCORE', heads_key, unpack(ARGV, 3))
for i = 1, #ARGV - 2 do
  if heads[i] then return 0 end
end
local now = server_now()
rcall('HSET', waiting_key, worker, ARGV[2])
for i = 3, #KEYS do
  rcall('ZADD', KEYS[i], now, worker)
end
return 1
