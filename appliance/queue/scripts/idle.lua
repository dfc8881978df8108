--[[
  A worker with a free slot found nothing to claim: register it as idle in the idle set of each shape it serves,
  so that the next job of any of them wakes it (one worker per job, oldest idle first: wake_one) - unless a job
  already waits in one of them, checked in the same step, so no job slips in between the check and the
  registration unseen.

  The same registration ends finish_claim.lua when its claim took nothing and the worker asked for it (a worker
  completing its last job): this script serves the calls that complete nothing.

  Cost: O(S log N) for a worker of S shapes (N idle workers per shape); one call each time the worker runs out
  of work, none while it stays idle.

  Input:
    KEYS[1]  heads     ZSET shape -> best waiting score
    KEYS[2]  waiting   HASH idle worker -> hub channel of its process
    KEYS[3]  paused    HASH 'queue' | 'shape:<id>' | 'customer:<id>' -> ms (a paused queue or shape's jobs do not
                       count as waiting: the claim would pass them over, and the worker would spin)
    KEYS[4..3+S]       idle ZSETs of the worker's S shapes, in the order of ARGV[3..2+S]

    ARGV[1]  worker id
    ARGV[2]  hub channel of the worker's process (where wake-ups for it go)
    ARGV[3..2+S]  the worker's shape ids (S >= 1)

  Returns: 1 when registered (the worker waits for a wake-up), or 0 when a job waits in one of its shapes
    (claim now; nothing was written)
]]
local rcall = redis.call
-- @include now
-- @include register_idle

local idle_keys = {}
for i = 4, #KEYS do idle_keys[#idle_keys + 1] = KEYS[i] end
return register_idle({heads = KEYS[1], waiting = KEYS[2], paused = KEYS[3], idle = idle_keys}, ARGV[1], ARGV[2],
  {unpack(ARGV, 3)})
