--[[
  Admit jobs of an API key against its limit of unfinished jobs. The key's set holds the ids it submitted that
  may still run; only when the new ones would not fit are the finished (or expired) ones dropped from it, so an
  admission is one ZCARD while the key is under its limit.

  Input:
    KEYS[1]  inflight  ZSET of the key's submitted job ids (score unused)
    KEYS[2]  state     HASH id -> status (the queue's)
    ARGV[1]  the key's limit
    ARGV[2..] ids of the jobs to admit

  Returns: {1, count after admitting} or {0, count of unfinished jobs} when they do not fit
]]
-- @admission

local fits, n = admit(KEYS[1], KEYS[2], tonumber(ARGV[1]), {unpack(ARGV, 2)})
return {fits and 1 or 0, n}
