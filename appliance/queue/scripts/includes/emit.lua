--[[
  Function to emit one lifecycle event on the capped stream and/or a pub/sub channel.
    mode       'stream+pubsub' | 'stream' | 'pubsub' | 'none'
    fields     flat {name, value, ...}; values are ids and numbers (no JSON escaping needed)
    extra_json raw JSON members appended to the pub/sub message only (e.g. ',"result":{...}'), or nil
]]
local function emit(events_key, mode, maxlen, channel, queue, event, fields, extra_json)
  if mode == 'none' then return end
  if mode ~= 'pubsub' then
    rcall('XADD', events_key, 'MAXLEN', '~', maxlen, '*', 'event', event, unpack(fields))
  end
  if mode ~= 'stream' then
    local parts = {'{"event":"', event, '","queue":"', queue, '"'}
    for i = 1, #fields, 2 do
      parts[#parts + 1] = ',"' .. fields[i] .. '":"' .. tostring(fields[i + 1]) .. '"'
    end
    if extra_json then parts[#parts + 1] = extra_json end
    parts[#parts + 1] = '}'
    rcall('PUBLISH', channel, table.concat(parts))
  end
end
