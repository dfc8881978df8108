--[[
  Function to set a shape's entry in the heads index to its ready index's current best score
  (or drop it when the shape has no waiting job). Returns that score, or nil when none waits.
]]
local function refresh_head(ready_key, heads_key, shape)
  local head = rcall('ZRANGE', ready_key, '0', '0', 'WITHSCORES')  -- text: a number argument is formatted as a float
  if head[1] then
    rcall('ZADD', heads_key, head[2], shape)
    return tonumber(head[2])
  end
  rcall('ZREM', heads_key, shape)
  return nil
end
