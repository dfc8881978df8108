--[[
  Function to read the server clock in ms: every machine of the fleet shares Redis's clock, so leases and
  delays do not depend on the workers' clocks agreeing.
]]
local function server_now()
  local t = rcall('TIME')
  -- Arithmetic converts the text itself, and x - x % 1 is math.floor for x >= 0: no calls of C functions
  -- (tonumber, math.floor: ~700 instructions each here), the same number.
  local ms = t[2] / 1000
  return t[1] * 1000 + (ms - ms % 1)
end
