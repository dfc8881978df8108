--[[
  Function to name a job in `limited` (jobs a customer's limit took out of line; docs/queue.md "Per-customer
  limits"): '<customer>|<score, 17 digits>|<shape>|<id>', so ZRANGEBYLEX lists a customer's held jobs in line
  order. limit.lua adds members; cancel.lua rebuilds one from the job's customer and meta to drop it.
]]
-- Score offset that keeps a member's score text positive and of one width, so ZRANGEBYLEX orders it.
local LIMIT_SCORE_BIAS = 4e15

local function limited_member(customer, score, shape, id)
  return string.format('%s|%017.0f|%s|%s', customer, math.max(0, tonumber(score) + LIMIT_SCORE_BIAS), shape, id)
end
