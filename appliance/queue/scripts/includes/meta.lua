--[[
  Function to split a job's meta column: shape|service|created_ms|priority|max_retries|timeout_ms|score.
]]
local function parse_meta(meta)
  local shape, service, created, priority, max_retries, timeout, score =
    string.match(meta, '^([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)$')
  return {shape = shape, service = service, created = tonumber(created), priority = tonumber(priority),
          max_retries = tonumber(max_retries), timeout = tonumber(timeout), score = score}
end
