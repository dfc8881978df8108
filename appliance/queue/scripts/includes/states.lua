--[[
  Function to write a batch's entries of the state column: at once, or, inside finish_claim.lua (`shared` set,
  see the loader's `-- @shared`), into the one HSET that script makes for its two transitions.
  `pairs` is flat: {id, status, id, status, ...}.
]]
local function write_states(shared, state_key, pairs)
  if #pairs == 0 then return end
  if shared then
    local all = shared.states
    for i = 1, #pairs do all[#all + 1] = pairs[i] end
  else
    rcall('HSET', state_key, unpack(pairs))
  end
end
