--[[
  Count one request of an API key in its current one-second window (shared by every API process, since the
  count lives in Redis). The caller compares the count with the key's limit: the key's record is read in the
  same round trip, outside this script, because the API's Redis user may only read the keys.

  Input:
    KEYS[1]  rate  STRING request count of the key's current window (expires with the window)

  Returns: {count in this window, ms until the window ends}
]]
-- @admission

return {count_request(KEYS[1])}
