--[[
  Function to find a worker class's two best shapes in score order: the best, and the runner-up that bounds a
  batch. It walks the heads index in growing pages (the sentinel at +inf marks the end) and keeps the shapes in the
  class's SET, passing over one for which `skip(shape)` is true (nil: none is passed over).
  Returns best shape, its head score, runner-up, its head score (nils where the class has fewer).
  Needs includes/sentinel.lua and includes/int.lua before it.
]]
local function class_top_of(heads_key, class_key, skip)
  local a, va
  local start, page, from, to = 0, 2, '0', '1'  -- the first page's bounds as text: no formatting
  while true do
    local entries = rcall('ZRANGE', heads_key, from, to, 'WITHSCORES')
    local n = #entries / 2
    if n == 0 then break end
    local members = {}
    for i = 1, n do members[i] = entries[2 * i - 1] end
    local held = rcall('SMISMEMBER', class_key, unpack(members))
    for i = 1, n do
      if held[i] == 1 and not (skip and skip(members[i])) then
        if a then return a, va, members[i], tonumber(entries[2 * i]) end
        a, va = members[i], tonumber(entries[2 * i])
      end
    end
    if n < page or members[n] == HEADS_SENTINEL then break end
    start, page = start + page, math.min(page * 4, 1024)
    from, to = int_s(start), int_s(start + page - 1)
  end
  return a, va
end
