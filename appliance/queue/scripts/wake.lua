--[[
  Pass a wake-up on: a worker woken for a shape took a job of another shape (or stopped), so if a job of this
  shape still waits, wake one other idle worker that serves it.

  Input:
    KEYS[1]  ready     ZSET of the shape
    KEYS[2]  idle      ZSET of the shape: idle worker -> ms it began waiting
    KEYS[3]  waiting   HASH idle worker -> hub channel of its process

    ARGV[1]  channel prefix  ARGV[2]  queue name
    ARGV[3]  events mode      ARGV[4]  events maxlen
    ARGV[5]  shape id
    ARGV[6]  wake_one's how: '1' (PUBLISH), 's' (SPUBLISH, a Cluster) or '0'

  Returns: 1 when a worker was woken, or 0 when none was (nothing of the shape waits, or no worker of it
    is idle)
]]
local rcall = redis.call
-- @include wake_one

if rcall('ZCARD', KEYS[1]) == 0 then return 0 end
if wake_one({idle = KEYS[2], waiting = KEYS[3]}, ARGV[5], ARGV[6]) then return 1 end
return 0
