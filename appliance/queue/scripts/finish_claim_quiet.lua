--[[
  A worker's round trip on a quiet queue: finish_claim.lua with only the keys its quiet path touches or checks
  (19 instead of 30: each key is a string Redis and Lua make on every call). The client calls it while its last
  round trip found no feature in use (LeaseClient.quiet). When one is, in this same call (charged leases, cancel
  requests, waiting children, limits or pauses: their keys exist), it changes nothing and answers 'busy'; the
  client then calls finish_claim.lua, which runs complete.lua and claim.lua. Otherwise it runs
  includes/quiet_trip.lua, as finish_claim.lua does on a quiet queue.

  Input:
    KEYS[1]  owner     HASH id -> token|worker|claimed_ms
    KEYS[2]  leases    ZSET id -> deadline
    KEYS[3]  state     HASH id -> status
    KEYS[4]  results   HASH id -> result JSON
    KEYS[5]  info      HASH id -> worker|claimed_ms|finished_ms
    KEYS[6]  done      ZSET id -> record expiry, ms
    KEYS[7]  counts    HASH of totals
    KEYS[8]  events    STREAM
    KEYS[9]  cancels   HASH id -> cancel request time (checked: must not exist)
    KEYS[10] meta      HASH id -> shape|service|...
    KEYS[11] children  ZSET 'parent|child' of waiting children (checked: must not exist)
    KEYS[12] charged   HASH id -> customer|pool its lease counts against (checked: must not exist)
    KEYS[13] heads     ZSET shape -> best waiting score
    KEYS[14] class     SET of the shape ids this worker class serves
    KEYS[15] spec      HASH id -> job JSON
    KEYS[16] attempts  HASH id -> attempts so far
    KEYS[17] paused    HASH of pauses (checked: must not exist)
    KEYS[18] limits    HASH of per-customer limits (checked: must not exist)
    KEYS[19] waiting   HASH idle worker -> hub channel of its process
    KEYS[20..19+C]     ready ZSETs of the C candidate shapes, then the idle ZSETs of the worker's S shapes when it
                       asks to be registered

    ARGV[1]  channel prefix  ARGV[2]  queue name
    ARGV[3]  events mode      ARGV[4]  events maxlen
    ARGV[5..]  as finish_claim.lua's (complete.lua's ARGV, the registration, the one-shape field, claim.lua's)

  Returns:
    'busy'  a feature is in use: nothing was changed (call finish_claim.lua)
    else {codes, claim, registered, 1} as finish_claim.lua's; codes, one per job in order:
     1  completed
    -2  lease lost: the outcome is not written

  Emits: as finish_claim.lua: completed (one stream entry and one complete_job message for them all), then
  claimed (one stream entry and one job_claimed message for them all)
]]
local rcall = redis.call
-- @include now
-- @include int
-- @include emit
-- @include owner
-- @include sentinel
-- @include register_idle
-- @include class_top
-- @include quiet_trip

if rcall('EXISTS', KEYS[12], KEYS[9], KEYS[11], KEYS[18], KEYS[17]) > 0 then return 'busy' end
local m = ARGV[5] + 0  -- arithmetic's conversion: no call of tonumber (includes/quiet_trip.lua)
local r = ARGV[6 + m] == '0' and 0 or ARGV[6 + m] + 0  -- no strtod for the usual 0
return quiet_trip(m, r, 8 + m + r, ARGV[7 + m + r], server_now(), 13, 19)
