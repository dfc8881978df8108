--[[
  Put a resumed customer's held jobs of one shape back in line, each at its original place (the score in its
  meta), and wake one idle worker of the shape per job. A job that is no longer waiting (cancelled
  meanwhile) only leaves `held`. The client lists the customer's held members (ZRANGEBYLEX) and calls this once
  per shape, with that shape's ready index in KEYS.

  Input:
    KEYS[1]  held      ZSET (score 0) '<customer>|<shape>|<id>'
    KEYS[2]  state     HASH id -> status
    KEYS[3]  meta      HASH id -> shape|service|created_ms|priority|max_retries|timeout_ms|score
    KEYS[4]  ready     ZSET of the shape: id -> score
    KEYS[5]  heads     ZSET shape -> best waiting score
    KEYS[6]  idle      ZSET of the shape: idle worker -> ms it began waiting
    KEYS[7]  waiting   HASH idle worker -> hub channel of its process

    ARGV[1]  channel prefix  ARGV[2]  queue name
    ARGV[3]  events mode    ARGV[4]  events maxlen
    ARGV[5]  shape id
    ARGV[6]  wake_one's how: '1' (PUBLISH), 's' (SPUBLISH, a Cluster) or '0'
    ARGV[7..] held members of this shape

  Returns: the number of jobs put back in line
]]
local rcall = redis.call
-- @include meta
-- @include in_line

local held_key, state_key, meta_key = KEYS[1], KEYS[2], KEYS[3]
local k = {state = state_key, ready = KEYS[4], heads = KEYS[5], idle = KEYS[6], waiting = KEYS[7]}
local back = 0
for i = 7, #ARGV do
  local member = ARGV[i]
  local id = string.match(member, '^[^|]*|[^|]*|(.*)$')
  if rcall('ZREM', held_key, member) == 1 and id and rcall('HGET', state_key, id) == 'pending' then
    local meta = rcall('HGET', meta_key, id)
    if meta then
      back_in_line(k, id, ARGV[5], parse_meta(meta).score, ARGV[6])
      back = back + 1
    end
  end
end
return back
