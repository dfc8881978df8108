--[[
  Function to append one error record (a JSON object) to a job's error history (a JSON array),
  without decoding it: cjson would turn an empty array into an object.
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
