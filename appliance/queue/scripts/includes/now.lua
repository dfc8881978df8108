--[[
  Function to read the server clock in ms: every machine of the fleet shares Redis's clock, so leases and
  delays do not depend on the workers' clocks agreeing.
]]
local function server_now()
  local t = rcall('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
