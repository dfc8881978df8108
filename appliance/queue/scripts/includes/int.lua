--[[
  Function to write an integer (a time in ms, a count, an attempt) as the decimal text Redis takes. A Lua number
  given to redis.call, or joined into a string, is formatted as a float ('%.17g', '%.14g'), which on a slow
  machine costs as much as a small command; '%d' about a third of that. Integers only: '%d' drops a fraction.
]]
local function int_s(n)
  return string.format('%d', n)
end
