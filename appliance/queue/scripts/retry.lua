--[[
  Put a failed or dead job back in line (dead-letter replay): out of the finished and dead indexes, its
  attempts reset so it gets max_retries again, its error history kept, back in its shape's ready index at its
  original score (it ranks as old as it is) and one idle worker of the shape woken.

  Input:
    KEYS[1]  state     HASH id -> status
    KEYS[2]  meta      HASH id -> shape|service|created_ms|priority|max_retries|timeout_ms|score
    KEYS[3]  ready     ZSET of the job's shape
    KEYS[4]  heads     ZSET shape -> best waiting score
    KEYS[5]  done      ZSET id -> record expiry
    KEYS[6]  dead      ZSET id -> time of death
    KEYS[7]  attempts  HASH id -> attempts so far
    KEYS[8]  info      HASH id -> worker|claimed_ms|finished_ms
    KEYS[9]  counts    HASH of totals
    KEYS[10] events    STREAM
    KEYS[11] idle      ZSET of the job's shape: idle worker -> ms it began waiting
    KEYS[12] waiting   HASH idle worker -> hub channel of its process

    ARGV[1]  channel prefix  ARGV[2]  queue name
    ARGV[3]  events mode    ARGV[4]  events maxlen
    ARGV[5]  job id         ARGV[6]  shape id (must be the job's)
    ARGV[7]  wake_one's how: '1' (PUBLISH), 's' (SPUBLISH, a Cluster) or '0'

  Returns:
     1  back in line
    -1  no such job       -5  wrong shape given
    -6  not failed or dead (waiting, running, completed or cancelled)

  Emits: replayed (channel job_submitted)
]]
local rcall = redis.call
-- @include emit
-- @include meta
-- @include in_line

local state_key, meta_key, ready_key, heads_key, done_key, dead_key =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local attempts_key, info_key, counts_key, events_key = KEYS[7], KEYS[8], KEYS[9], KEYS[10]
local queue, mode, maxlen, id = ARGV[2], ARGV[3], ARGV[4], ARGV[5]

local status = rcall('HGET', state_key, id)
if not status then return -1 end
local meta = parse_meta(rcall('HGET', meta_key, id) or '')
if meta.shape ~= ARGV[6] then return -5 end
if status ~= 'failed' and status ~= 'dead' then return -6 end

rcall('ZREM', done_key, id)
rcall('ZREM', dead_key, id)
rcall('HDEL', info_key, id)
rcall('HSET', attempts_key, id, 0)
local line = {state = state_key, ready = ready_key, heads = heads_key, idle = KEYS[11], waiting = KEYS[12]}
back_in_line(line, id, meta.shape, meta.score, ARGV[7])
rcall('HINCRBY', counts_key, 'replayed', 1)
emit(events_key, mode, maxlen, 'job_submitted', queue, 'replayed', {'job', id, 'service', meta.service, 'shape', meta.shape})
return 1
