--[[
  A worker's round trip: complete its finished jobs, then claim up to N jobs for its free slots (the finished
  jobs' slots count as free: their leases end first), in one script call. It runs complete.lua and claim.lua
  themselves: the loader includes their sources unchanged as two functions (`-- @transition`), and builds each
  one's KEYS from this header by name (`-- @keys`), so a change to either script is a change to this one.
  One call instead of the two pipelined scripts saves a script dispatch, a reply and the client's pipeline.
  When the claim takes nothing and the worker asked (r > 0), it is registered as idle in the same step, as
  idle.lua would (includes/register_idle.lua: unless a job of its shapes waits): a worker's last completion and
  its registration are one call, and no job slips in between "found nothing" and "registered".

  Input:
    KEYS[1]  owner     HASH id -> token|worker|claimed_ms
    KEYS[2]  leases    ZSET id -> deadline
    KEYS[3]  state     HASH id -> status
    KEYS[4]  results   HASH id -> result JSON
    KEYS[5]  info      HASH id -> worker|claimed_ms|finished_ms
    KEYS[6]  done      ZSET id -> record expiry, ms
    KEYS[7]  counts    HASH of totals
    KEYS[8]  events    STREAM
    KEYS[9]  cancels   HASH id -> cancel request time
    KEYS[10] meta      HASH id -> shape|service|...
    KEYS[11] delayed   ZSET id -> due, ms (children released by their last parent go there, due at once)
    KEYS[12] errors    HASH id -> error history
    KEYS[13] dead      ZSET id -> time of death
    KEYS[14] children  ZSET (score 0) 'parent|child' of waiting children (includes/deps.lua)
    KEYS[15] blocked   ZSET child -> parents not finished yet
    KEYS[16] parents   HASH child -> policy|start ms|parents
    KEYS[17] charged   HASH id -> customer|pool its lease counts against (limits)
    KEYS[18] inflight  HASH customer[|pool] -> leased jobs of a limited customer
    KEYS[19] limited   ZSET (score 0) jobs a limit took out of line, by customer
    KEYS[20] limits_due  ZSET customer -> ms its limited jobs may go back in line
    KEYS[21] heads     ZSET shape -> best waiting score
    KEYS[22] class     SET of the shape ids this worker class serves
    KEYS[23] spec      HASH id -> job JSON
    KEYS[24] attempts  HASH id -> attempts so far
    KEYS[25] paused    HASH 'queue' | 'shape:<id>' | 'customer:<id>' -> ms: what claims skip
    KEYS[26] held      ZSET (score 0) '<customer>|<shape>|<id>': jobs taken out of line by their customer's pause
    KEYS[27] customer  HASH id -> customer (absent: the default customer '-')
    KEYS[28] limits    HASH of per-customer limits (empty: no limit is checked)
    KEYS[29] buckets   HASH customer -> tokens|ms of its start-rate bucket
    KEYS[30] waiting   HASH idle worker -> hub channel of its process
    KEYS[31..30+C]     ready ZSETs of the C candidate shapes (claim.lua's tail), then the idle ZSETs of the
                       worker's S shapes when it asks to be registered (claim.lua counts its candidates by ARGV)

    ARGV[1]  channel prefix  ARGV[2]  queue name
    ARGV[3]  events mode      ARGV[4]  events maxlen
    ARGV[5]  m: how many of complete.lua's own ARGV follow
    ARGV[6..5+m]  complete.lua's ARGV after the common prefix (result TTL, then the job triples)
    ARGV[6+m]  r: how many ARGV of the idle registration follow (0: do not register)
    ARGV[7+m..6+m+r]  the hub channel of the worker's process, then its S = r - 1 shape ids
    ARGV[7+m+r]  the worker class's only shape, '' when it has several (a quiet call then claims from that
                 shape's ready index without walking `heads`)
    ARGV[8+m+r..]  claim.lua's ARGV after the common prefix (worker id, token prefix, lease, n, slack, candidates)

  Returns:
    {codes, claim, registered, quiet}: complete.lua's codes, one per job in order, claim.lua's reply, 1 when the
    worker was registered as idle (else 0), and 1 when no feature was in use (the quiet path ran: the client
    may call finish_claim_quiet.lua next, with fewer KEYS)
     1  completed
    -2  lease lost: the outcome is not written

  Emits: completed (one stream entry and one complete_job message for them all), then claimed (one stream entry
  and one job_claimed message for them all: includes/emit.lua `emit_many`)
]]
local rcall = redis.call
-- @include now
-- @include int
-- @include emit
-- @include owner
-- @include sentinel
-- @include heads
-- @include register_idle
-- @include class_top
-- @include quiet_trip

local m = ARGV[5] + 0  -- arithmetic's conversion: no call of tonumber (includes/quiet_trip.lua)
local r = ARGV[6 + m] == '0' and 0 or ARGV[6 + m] + 0  -- no strtod for the usual 0
local now = server_now()
-- One EXISTS for the keys that stay empty unless a feature is in use: charged leases, cancel requests and waiting
-- children (the completion's), limits and pauses (the claim's). None: the round trip of a quiet queue
-- (includes/quiet_trip.lua), whose answer holds for the whole call (a script runs alone; the completion never
-- writes one of these keys while all are empty). Else complete.lua and claim.lua run as they are.
if rcall('EXISTS', KEYS[17], KEYS[9], KEYS[14], KEYS[28], KEYS[25]) == 0 then
  return quiet_trip(m, r, 8 + m + r, ARGV[7 + m + r], now, 21, 30)
end
-- complete.lua and claim.lua as functions (made here, not on the quiet path above), and their KEYS by name.
-- @transition complete
-- @transition claim
-- @keys complete
-- @keys claim
local complete_argv = {ARGV[1], ARGV[2], ARGV[3], ARGV[4], unpack(ARGV, 6, 5 + m)}
local claim_argv = {ARGV[1], ARGV[2], ARGV[3], ARGV[4], unpack(ARGV, 8 + m + r)}
-- What the two share (`-- @shared` in each): one TIME for both, and one HSET of the state column for the jobs
-- both change (a completed job and a claimed one are never the same job), made once both have run. Not quiet:
-- each transition checks the features it has on its own.
local shared = {now = now, states = {}, quiet = false}
local codes = complete_(complete_keys, complete_argv, shared)
local claimed = claim_(claim_keys, claim_argv, shared)
if shared.metas_for then  -- the claim took no job: the completed jobs' events, as complete.lua alone emits them
  shared.with_metas(rcall('HMGET', KEYS[10], unpack(shared.metas_for)))
end
if #shared.states > 0 then rcall('HSET', KEYS[3], unpack(shared.states)) end
local registered = 0
if r > 0 and claimed[1] == 'none' then
  local shapes, idle_keys = {unpack(ARGV, 8 + m, 6 + m + r)}, {}
  for i = #KEYS - #shapes + 1, #KEYS do idle_keys[#idle_keys + 1] = KEYS[i] end
  local k = {heads = KEYS[21], waiting = KEYS[30], paused = KEYS[25], idle = idle_keys}
  registered = register_idle(k, claim_argv[5], ARGV[7 + m], shapes, shared.now)
end
return {codes, claimed, registered, 0}
