--[[
  The member that pins the heads index to the hashtable encoding (never a shape id: those are 16 hex digits).
]]
local HEADS_SENTINEL = '~heads-index-sentinel-keeps-the-hashtable-encoding-for-constant-time-score-lookups~'
