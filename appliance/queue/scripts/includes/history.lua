--[[
  Functions to append one error record to a job's error history (a JSON array), without decoding the history:
  cjson would turn an empty array into an object. `append_error` takes a JSON object (checked by the caller);
  `append_error_record` takes a Lua table and encodes it with cjson, so a worker id or reason holding a quote
  or a backslash still makes valid JSON.
]]
local function append_error(errors_key, id, error_json)
  local history = rcall('HGET', errors_key, id)
  if history and #history > 2 then
    history = string.sub(history, 1, -2) .. ',' .. error_json .. ']'
  else
    history = '[' .. error_json .. ']'
  end
  rcall('HSET', errors_key, id, history)
end

local function append_error_record(errors_key, id, record)
  append_error(errors_key, id, cjson.encode(record))
end
