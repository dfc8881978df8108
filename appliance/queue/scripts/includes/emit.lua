--[[
  Functions to emit lifecycle events on the capped stream and/or a pub/sub channel: `emit` one event, `emit_many`
  several of one kind (one stream entry and one pub/sub message for them all).
    mode       'stream+pubsub' | 'stream' | 'pubsub' | 'none', with ':sharded' appended in a Cluster whose
               channels carry the queue's hash tag: SPUBLISH (Redis 7 sharded pub/sub) then reaches the
               subscribers of the queue's shard only, instead of PUBLISH's broadcast to every node
    channel    the channel's base name; ARGV[1] (the common prefix every script takes) is put before it: '' for
               the shared channels, 'appliance:{<queue>}:' for per-queue ones (queue.channels)
    fields     flat {name, value, ...}; names are literals, values (ids, numbers) are JSON-encoded by cjson so
               no value can break the message
    extra_json raw JSON members appended to the pub/sub message only (small: never a job's result), or nil
  A stream entry is one event's `event <kind>` and fields or (emit_many with several) `event <kind> jobs <JSON
  array>`; a pub/sub message is one event's JSON object, or one object for them all, with the same `jobs` array:
  readers expand both (appliance/queue/events.py `entry_events`, `pubsub_events`).
]]
local function emit(events_key, mode, maxlen, channel, queue, event, fields, extra_json)
  local sharded = string.find(mode, ':sharded', 1, true)
  if sharded then mode = string.sub(mode, 1, sharded - 1) end
  if mode == 'none' then return end
  if mode ~= 'pubsub' then
    rcall('XADD', events_key, 'MAXLEN', '~', maxlen, '*', 'event', event, unpack(fields))
  end
  if mode ~= 'stream' then
    -- One cjson call for the whole object (member order is cjson's; readers decode it): 40% fewer instructions
    -- than encoding each value on its own and joining the pieces.
    local doc = {event = event, queue = queue}
    for i = 1, #fields, 2 do doc[fields[i]] = tostring(fields[i + 1]) end
    local message = cjson.encode(doc)
    if extra_json then message = string.sub(message, 1, -2) .. extra_json .. '}' end
    rcall(sharded and 'SPUBLISH' or 'PUBLISH', ARGV[1] .. channel, message)
  end
end

-- Several events of one kind (a batch's completions, or its claims): ONE stream entry and ONE pub/sub message for
-- them all, from one cjson call. An XADD per job (and its field table) was most of what the events cost a round
-- trip of 10 jobs (issue 14, docs/performance.md §1). One event is written as `emit` writes it: a stream entry of
-- `event` and its fields, a message of its JSON object. Several: the entry `event <kind> jobs <JSON array>` and
-- the message {"event", "queue", "jobs": <the same array>}, each element one event's other members (event and
-- queue once, not per job); readers expand both (appliance/queue/events.py `entry_events`, `pubsub_events`).
-- `docs[i]` is event i's {name = value, ...} (strings), built by a table constructor (a constructor sizes a table
-- once; filling it field by field regrows it); `entry`, for one event only, the same names and values flat in
-- stream order {name, value, ...}. tests/queue/test_round_trip.py checks that the copies agree.
-- `jobs`, when given, is the JSON array of several events as text, and `docs` their count (includes/quiet_trip.lua
-- builds it with cjson's encoding of each string: tests/queue/test_batch_events.py).
local function emit_many(events_key, mode, maxlen, channel, queue, event, docs, entry, jobs)
  local sharded = string.find(mode, ':sharded', 1, true)
  if sharded then mode = string.sub(mode, 1, sharded - 1) end
  if mode == 'none' or (not jobs and #docs == 0) then return end
  local publish = sharded and 'SPUBLISH' or 'PUBLISH'
  if not jobs and #docs == 1 then
    if mode ~= 'pubsub' then
      rcall('XADD', events_key, 'MAXLEN', '~', maxlen, '*', 'event', event, unpack(entry))
    end
    if mode ~= 'stream' then
      local message = docs[1]
      message.event, message.queue = event, queue
      rcall(publish, ARGV[1] .. channel, cjson.encode(message))
    end
    return
  end
  jobs = jobs or cjson.encode(docs)
  if mode ~= 'pubsub' then
    rcall('XADD', events_key, 'MAXLEN', '~', maxlen, '*', 'event', event, 'jobs', jobs)
  end
  if mode ~= 'stream' then
    -- event is a literal; the queue's name as it is unless it holds what JSON escapes.
    local queue_js = string.find(queue, '[%c"\\]') and cjson.encode(queue) or '"' .. queue .. '"'
    rcall(publish, ARGV[1] .. channel,
      '{"event":"' .. event .. '","queue":' .. queue_js .. ',"jobs":' .. jobs .. '}')
  end
end
