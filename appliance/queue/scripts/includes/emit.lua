--[[
  Functions to emit lifecycle events on the capped stream and/or a pub/sub channel: `emit` one event, `emit_many`
  several of one kind (one stream entry each, one pub/sub message for them all).
    mode       'stream+pubsub' | 'stream' | 'pubsub' | 'none', with ':sharded' appended in a Cluster whose
               channels carry the queue's hash tag: SPUBLISH (Redis 7 sharded pub/sub) then reaches the
               subscribers of the queue's shard only, instead of PUBLISH's broadcast to every node
    channel    the channel's base name; ARGV[1] (the common prefix every script takes) is put before it: '' for
               the shared channels, 'appliance:{<queue>}:' for per-queue ones (queue.channels)
    fields     flat {name, value, ...}; names are literals, values (ids, numbers) are JSON-encoded by cjson so
               no value can break the message
    extra_json raw JSON members appended to the pub/sub message only (small: never a job's result), or nil
  A pub/sub message is one event's JSON object, or (emit_many with several) one object for them all, with a `jobs`
  array: readers decode both (appliance/queue/events.py `pubsub_events`).
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

-- Several events of one kind (a batch's completions, or its claims): one stream entry per event, as emit writes
-- them, and ONE pub/sub message for them all: a PUBLISH and a cjson call per job were about a fifth of a 10-job
-- round trip. The message is the event's object for one event, else {"event", "queue", "jobs": [the events'
-- other members, one object each]} (event and queue once, not per job). The caller builds each event twice, by
-- table constructors (a constructor sizes a table once; filling it field by field regrows it): `entries[i]` the
-- stream entry's flat {name, value, ...} after `event`, `docs[i]` the message's {name = value, ...}, the same
-- names and values (strings). tests/queue/test_round_trip.py checks that the two agree.
local function emit_many(events_key, mode, maxlen, channel, queue, event, entries, docs)
  local sharded = string.find(mode, ':sharded', 1, true)
  if sharded then mode = string.sub(mode, 1, sharded - 1) end
  if mode == 'none' or #entries == 0 then return end
  if mode ~= 'pubsub' then
    if #entries == 1 then
      rcall('XADD', events_key, 'MAXLEN', '~', maxlen, '*', 'event', event, unpack(entries[1]))
    else
      -- One trim after the batch, as approximate as XADD's (`~`), instead of a trim check and its three arguments
      -- per entry: 12% fewer instructions for ten entries.
      for i = 1, #entries do rcall('XADD', events_key, '*', 'event', event, unpack(entries[i])) end
      rcall('XTRIM', events_key, 'MAXLEN', '~', maxlen)
    end
  end
  if mode ~= 'stream' then
    local message = docs[1]
    if #docs == 1 then
      message.event, message.queue = event, queue
    else
      message = {event = event, queue = queue, jobs = docs}
    end
    rcall(sharded and 'SPUBLISH' or 'PUBLISH', ARGV[1] .. channel, cjson.encode(message))
  end
end
