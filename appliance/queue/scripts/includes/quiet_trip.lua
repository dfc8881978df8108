--[[
  Function for finish_claim.lua's round trip on a quiet queue: none of the keys a feature writes exists (charged
  leases, cancel requests, waiting children, limits, pauses), which the caller checked in this same call, so
  nothing can switch a feature on before it returns. complete.lua and claim.lua then take their plain paths;
  this is those paths written for that case with less Lua per call (issue 14, docs/performance.md §1): no
  closures of the features' functions, a table only where a batch needs one, HGET for one job's lease and spec,
  each pub/sub message of one event written as JSON text (cjson where a value would need escaping), and no walk
  of `heads` for a class of one shape (`one`: the client's word for its own class). The same commands otherwise,
  the same writes, the same events in the same order and the same reply; tests/queue/test_quiet_trip.py runs
  both paths on the same jobs and compares what they leave in Redis.
  Takes finish_claim.lua's ARGV (its header) and the KEYS of it or of finish_claim_quiet.lua: both start owner,
  leases, state, results, info, done, counts, events, cancels, meta; KEYS[heads_at] is heads, then class, spec,
  attempts, paused; KEYS[waiting_at] is waiting, then the candidates' ready indexes (and the idle sets). `c` is
  where claim.lua's ARGV (the worker id) starts. Returns {codes, claim reply, registered, 1} (1: this path ran),
  as finish_claim.lua.
]]
local function quiet_trip(m, r, c, one, now, heads_at, waiting_at)
  -- A meta record's service ('' for none), and its prefix shape|service| (nil when it has none). A batch's jobs
  -- share the prefix: its callers look for the one before (a plain find) before they parse a meta again. Made
  -- here, not beside quiet_trip: finish_claim.lua's full path does not pay for it.
  local function meta_prefix(meta)
    if not meta then return '' end
    local a = string.find(meta, '|', 1, true)
    local b = a and string.find(meta, '|', a + 1, true)
    if not b then return '' end
    return string.sub(meta, a + 1, b - 1), string.sub(meta, 1, b)
  end

  local owner_key, leases_key, state_key, events_key, meta_key = KEYS[1], KEYS[2], KEYS[3], KEYS[8], KEYS[10]
  local heads_key, class_key = KEYS[heads_at], KEYS[heads_at + 1]
  local spec_key, attempts_key = KEYS[heads_at + 2], KEYS[heads_at + 3]
  local queue, mode, maxlen = ARGV[2], ARGV[3], ARGV[4]
  local sharded = string.find(mode, ':sharded', 1, true)
  if sharded then mode = string.sub(mode, 1, sharded - 1) end
  local stream, pubsub = mode ~= 'none' and mode ~= 'pubsub', mode ~= 'none' and mode ~= 'stream'
  local publish = sharded and 'SPUBLISH' or 'PUBLISH'
  -- One event's message as JSON text: its strings as they are unless one holds what JSON escapes (ESCAPED), then
  -- cjson for the whole message.
  local ESCAPED = '[%c"\\]'
  local queue_js = pubsub and (string.find(queue, ESCAPED) and cjson.encode(queue) or '"' .. queue .. '"')
  local now_s = int_s(now)
  -- Numbers in text (ARGV, records) are read by arithmetic's own conversion where they are used, not by
  -- tonumber: the same strtod without a call of a C function (~700 instructions each here).
  -- A batch's events are JSON text built here (emit_many's `jobs`), each string value cjson's own encoding
  -- (so any id, worker or service comes out as cjson writes it), each service encoded once (services_js),
  -- members in the order cjson gives them for these tables (the same text as before): cjson over tables of
  -- the events cost ~5,000 instructions an event, this about a third.
  local services_js, SMALL
  -- {unpack(NONE, 1, n)}: a table of n array slots (nil), to fill by index: one filled from {} is regrown at each
  -- power of two (luaH_resize: ~1,000 instructions a job per table in a batch of 8), this is sized once.
  local NONE = {}

  -- The completions (complete.lua): one read of the leases, one write per column.
  -- done: the ids completed; d_worker, d_took (k == 1: claimed_ms, else duration_ms, as text), d_result of the
  -- one completed (nd == 1); done_docs: each one's event (a batch; its service filled in with the meta's).
  local k, codes, done = (m - 1) / 3, {}, {}
  local done_docs, d_worker, d_took, d_result
  if k == 1 then
    local w, claimed_s = parse_lease(rcall('HGET', owner_key, ARGV[7]), ARGV[8], '', true)
    if w then
      codes[1], done[1], d_worker, d_took, d_result = 1, ARGV[7], w, claimed_s, ARGV[9]
      rcall('HDEL', owner_key, ARGV[7])
      rcall('ZREM', leases_key, ARGV[7])
      rcall('HSET', KEYS[4], ARGV[7], ARGV[9])
      rcall('HSET', KEYS[5], ARGV[7], w .. '|' .. claimed_s .. '|' .. now_s)
      rcall('ZADD', KEYS[6], int_s(now + ARGV[6]), ARGV[7])
      rcall('HINCRBY', KEYS[7], 'completed', '1')
    else
      codes[1] = -2
    end
  elseif k > 1 then
    local asked, pairs_ = {unpack(NONE, 1, k)}, {unpack(NONE, 1, 2 * k)}
    local infos, dones = {unpack(NONE, 1, 2 * k)}, {unpack(NONE, 1, 2 * k)}
    codes, done = {unpack(NONE, 1, k)}, {unpack(NONE, 1, k)}
    if mode ~= 'none' then
      done_docs, services_js = {unpack(NONE, 1, 3 * k + 2)}, {}
      done_docs[1] = '['
    end
    for i = 1, k do asked[i] = ARGV[4 + 3 * i] end
    local owners, expiry_s = rcall('HMGET', owner_key, unpack(asked)), int_s(now + ARGV[6])
    -- A batch's jobs were mostly claimed together, by one worker: their owner records differ only in the
    -- token, so a record whose rest (|worker|claimed_ms) is the one before's is not parsed again (strings
    -- compare by identity in Lua), and the duration, the info record and the event's parts are made once per
    -- distinct rest; a duplicate id is found by a scan of those done so far (a table for a large batch).
    local find, sub = string.find, string.sub
    local seen, n, last_rest, w, claimed_s, took, info, mid = k > 16 and {}, 0, nil, nil, nil, nil, nil, nil
    local last_bytes, head, sep_head
    for i, id in ipairs(asked) do
      local own, token, fresh = owners[i], ARGV[5 + 3 * i], nil
      if own and token ~= '' and find(own, '|', 1, true) == #token + 1 and find(own, token, 1, true) == 1 then
        local rest = sub(own, #token + 2)
        if rest ~= last_rest then
          last_rest, fresh = rest, true
          w, claimed_s = parse_lease(own, token, '', true)
        end
      elseif own then
        last_rest, fresh = nil, true
        w, claimed_s = parse_lease(own, token, '', true)
      end
      if fresh and w then
        info = w .. '|' .. claimed_s .. '|' .. now_s
        if done_docs then
          took, last_bytes = int_s(now - claimed_s), nil
          mid = ',"worker":' .. cjson.encode(w) .. ',"job":'
        end
      end
      local owned = own and w
      if owned then
        if seen then
          owned = not seen[id]
          seen[id] = true
        else
          for j = 1, n do
            if done[j] == id then owned = false; break end
          end
        end
      end
      if owned then
        local result = ARGV[6 + 3 * i]
        n = n + 1
        codes[i], done[n], d_worker, d_took, d_result = 1, id, w, took, result
        pairs_[2 * n - 1], pairs_[2 * n] = id, result
        infos[2 * n - 1], infos[2 * n] = id, info
        dones[2 * n - 1], dones[2 * n] = expiry_s, id
        if done_docs then
          -- The event as JSON text in three parts: '{...' up to the service (with '},' before all but the
          -- first), the service's and the worker's (filled in once the metas are read), the id.
          if #result ~= last_bytes then
            last_bytes = #result
            head = '{"duration_ms":"' .. took .. '","result_bytes":"' .. int_s(#result) .. '","service":'
            sep_head = '},' .. head
          end
          done_docs[3 * n - 1], done_docs[3 * n], done_docs[3 * n + 1] = n == 1 and head or sep_head, mid,
            cjson.encode(id)
        end
      else
        codes[i] = -2
      end
    end
    if n > 0 then
      rcall('HDEL', owner_key, unpack(done, 1, n))
      rcall('ZREM', leases_key, unpack(done, 1, n))
      rcall('HSET', KEYS[4], unpack(pairs_, 1, 2 * n))
      rcall('HSET', KEYS[5], unpack(infos, 1, 2 * n))
      rcall('ZADD', KEYS[6], unpack(dones, 1, 2 * n))
      rcall('HINCRBY', KEYS[7], 'completed', int_s(n))
    end
  end

  -- The claim (claim.lua without pauses and limits): the class's best shape, then its jobs in score order.
  local worker, want, slack = ARGV[c], ARGV[c + 3] + 0, nil  -- slack: read by the walk of heads only
  if want > 1 then  -- counts as text without formatting, for a batch
    SMALL = {[0] = '0', '1', '2', '3', '4', '5', '6', '7', '8', '9', '10', '11', '12', '13', '14', '15', '16'}
  end
  local ncand = #ARGV - c - 6  -- candidate i: shape ARGV[c + 6 + i], ready index KEYS[waiting_at + i]
  local reply, ids, best, ready_key, s1, v1, s2, v2
  if one ~= '' and ARGV[c + 7] == one then
    best, ready_key = one, KEYS[waiting_at + 1]  -- a class of one shape: its shape is its best, no walk needed
  else
    s1, v1, s2, v2 = class_top_of(heads_key, class_key)
    slack = tonumber(ARGV[c + 4])
    if not s1 then
      reply = {rcall('EXISTS', class_key) == 0 and 'noclass' or 'none'}
    else
      for i = 1, ncand do
        if ARGV[c + 6 + i] == s1 then best, ready_key = s1, KEYS[waiting_at + i] end
      end
      if not best and slack > 0 then
        local heads, best_score = rcall('ZMSCORE', heads_key, unpack(ARGV, c + 7, c + 6 + ncand)), nil
        for i = 1, ncand do
          local score = tonumber(heads[i])
          if score and score <= v1 + slack and (not best_score or score < best_score) then
            best, best_score, ready_key = ARGV[c + 6 + i], score, KEYS[waiting_at + i]
          end
        end
        if best and rcall('SISMEMBER', class_key, best) == 0 then best = nil end
      end
      if not best then reply = {'retry', s2 and (s1 .. ',' .. s2) or s1} end
    end
  end
  local head_score
  if best then
    -- Jobs of `best` while they rank no worse than (the slack past) the best other shape's head.
    local bound
    if s1 then
      if s1 ~= best then bound = v1 + slack elseif s2 then bound = v2 + slack end
    end
    ids = {}
    local first = true
    if bound == nil and want > 1 then
      -- No bound: the first `want` jobs, without their scores (ZPOPMIN formats each as a double, ~4,000
      -- instructions a job, for nothing here); one command more per call.
      ids = rcall('ZRANGE', ready_key, '0', SMALL[want - 1] or int_s(want - 1))
      if #ids > 0 then rcall('ZREMRANGEBYRANK', ready_key, '0', SMALL[#ids - 1] or int_s(#ids - 1)) end
      first = nil
    end
    while first do
      local popped = rcall('ZPOPMIN', ready_key, #ids == 0 and ARGV[c + 3] or int_s(want - #ids))
      local stop = #popped < 2 * (want - #ids)
      for i = 1, #popped, 2 do
        if first or bound == nil or tonumber(popped[i + 1]) <= bound then
          ids[#ids + 1] = popped[i]
        else
          rcall('ZADD', ready_key, popped[i + 1], popped[i])
          stop = true
        end
        first = false
      end
      if stop or #ids >= want then break end
    end
    -- refresh_head (includes/heads.lua), its score parsed only where the hint compares it (a class of one shape
    -- needs only whether one is left: strtod of a 17-digit score is ~2,000 instructions).
    local head = rcall('ZRANGE', ready_key, '0', '0', 'WITHSCORES')
    if head[1] then
      rcall('ZADD', heads_key, head[2], best)
      head_score = s1 and tonumber(head[2]) or true
    else
      rcall('ZREM', heads_key, best)
    end
    if #ids == 0 then
      -- heads named a shape with nothing waiting (corrected now): point the client at the new best.
      if s1 then s1, v1, s2, v2 = class_top_of(heads_key, class_key) end
      if not s1 then reply = {'none'} else reply = {'retry', s2 and (s1 .. ',' .. s2) or s1} end
      ids = nil
    end
  end

  -- Meta of the completed and the claimed jobs, in one read (the events' service and wait).
  local nd, nc = #done, ids and #ids or 0
  local metas
  if mode ~= 'none' and nd + nc > 0 then
    if nd + nc == 1 then
      metas = {rcall('HGET', meta_key, done[1] or ids[1])}
    else
      local wanted = {unpack(NONE, 1, nd + nc)}
      for i = 1, nd do wanted[i] = done[i] end
      for i = 1, nc do wanted[nd + i] = ids[i] end
      metas = rcall('HMGET', meta_key, unpack(wanted))
    end
  end
  if nd > 0 and mode ~= 'none' then
    if nd == 1 then
      local id, w = done[1], d_worker
      local service = string.match(metas[1] or '', '^[^|]*|([^|]*)|') or ''
      local took, size = k == 1 and int_s(now - d_took) or d_took, int_s(#d_result)
      if stream then
        rcall('XADD', events_key, 'MAXLEN', '~', maxlen, '*', 'event', 'completed', 'job', id, 'worker', w,
          'service', service, 'duration_ms', took, 'result_bytes', size)
      end
      if pubsub then
        local text
        if string.find(id .. w .. service, ESCAPED) then
          text = cjson.encode({event = 'completed', queue = queue, job = id, worker = w, service = service,
            duration_ms = took, result_bytes = size})
        else
          text = '{"event":"completed","queue":' .. queue_js .. ',"job":"' .. id .. '","worker":"' .. w
            .. '","service":"' .. service .. '","duration_ms":"' .. took .. '","result_bytes":"' .. size .. '"}'
        end
        rcall(publish, ARGV[1] .. 'complete_job', text)
      end
    else
      -- Each event's middle part: its service's JSON and the worker's part after it, made once per distinct
      -- pair; the service read once per distinct meta prefix (shape|service|).
      local find, prefix, service, last_service, last_mid, middle = string.find, nil, nil, nil, nil, nil
      for i = 1, nd do
        local meta = metas[i]
        if not (prefix and meta and find(meta, prefix, 1, true) == 1) then
          service, prefix = meta_prefix(meta)
        end
        local mid = done_docs[3 * i]
        if service ~= last_service or mid ~= last_mid then
          last_service, last_mid = service, mid
          local js = services_js[service]
          if not js then js = cjson.encode(service); services_js[service] = js end
          middle = js .. mid
        end
        done_docs[3 * i] = middle
      end
      done_docs[3 * nd + 2] = '}]'
      emit_many(events_key, ARGV[3], maxlen, 'complete_job', queue, 'completed', nd,
        nil, table.concat(done_docs, '', 1, 3 * nd + 2))
    end
  end

  local registered = 0
  if not ids then
    if nd == 1 then
      rcall('HSET', state_key, done[1], 'completed')
    elseif nd > 1 then
      local states = {}
      for i = 1, nd do states[2 * i - 1], states[2 * i] = done[i], 'completed' end
      rcall('HSET', state_key, unpack(states))
    end
    if r > 0 and reply[1] == 'none' then
      local shapes, idle_keys = {unpack(ARGV, 8 + m, 6 + m + r)}, {}
      for i = #KEYS - #shapes + 1, #KEYS do idle_keys[#idle_keys + 1] = KEYS[i] end
      local keys = {heads = heads_key, waiting = KEYS[waiting_at], paused = KEYS[heads_at + 4],
        idle = idle_keys}
      registered = register_idle(keys, worker, ARGV[7 + m], shapes, now)
    end
    return {codes, reply, registered, 1}
  end

  -- The hint after this claim: the class's best shapes, the claimed one re-ranked by its new head (or gone).
  local hint
  if best == s1 or not s1 then
    if not s2 then
      hint = head_score and best or ''
    elseif not head_score then
      hint = s2
    elseif v2 > head_score then
      hint = best .. ',' .. s2
    else
      hint = s2 .. ',' .. best
    end
  else
    local top = {{s1, v1}}
    if s2 and s2 ~= best then top[2] = {s2, v2} end
    if best == s2 then top = {{s1, v1}} end
    if head_score then
      local at = #top + 1
      for i = #top, 1, -1 do
        if top[i][2] > head_score then at = i end
      end
      table.insert(top, at, {best, head_score})
    end
    local names = {}
    for i, entry in ipairs(top) do names[i] = entry[1] end
    hint = table.concat(names, ',')
  end

  local token, deadline = ARGV[c + 1], now + ARGV[c + 2]
  local deadline_s = int_s(deadline)
  reply = {'ok', hint, deadline, best}
  if nc == 1 then
    local id = ids[1]
    local attempt = rcall('HINCRBY', attempts_key, id, '1')
    reply[5], reply[6], reply[7] = id, rcall('HGET', spec_key, id), attempt
    if mode ~= 'none' then
      local attempt_s = attempt == 1 and '1' or int_s(attempt)
      local service, created = string.match(metas[nd + 1], '^[^|]*|([^|]*)|([^|]*)|')
      local waited = int_s(now - created)
      if stream then
        rcall('XADD', events_key, 'MAXLEN', '~', maxlen, '*', 'event', 'claimed', 'job', id, 'worker', worker,
          'attempt', attempt_s, 'service', service, 'wait_ms', waited)
      end
      if pubsub then
        local text
        if string.find(id .. worker .. service, ESCAPED) then
          text = cjson.encode({event = 'claimed', queue = queue, job = id, worker = worker, attempt = attempt_s,
            service = service, wait_ms = waited})
        else
          text = '{"event":"claimed","queue":' .. queue_js .. ',"job":"' .. id .. '","worker":"' .. worker
            .. '","attempt":"' .. attempt_s .. '","service":"' .. service .. '","wait_ms":"' .. waited .. '"}'
        end
        rcall(publish, ARGV[1] .. 'job_claimed', text)
      end
    end
    if nd == 1 then
      rcall('HSET', state_key, done[1], 'completed', id, 'claimed')
    elseif nd == 0 then
      rcall('HSET', state_key, id, 'claimed')
    else
      local states = {}
      for i = 1, nd do states[2 * i - 1], states[2 * i] = done[i], 'completed' end
      states[2 * nd + 1], states[2 * nd + 2] = id, 'claimed'
      rcall('HSET', state_key, unpack(states))
    end
    rcall('HSET', owner_key, id, token .. '.1|' .. worker .. '|' .. now_s)
    rcall('ZADD', leases_key, deadline_s, id)
    return {codes, reply, 0, 1}
  end
  local specs, attempts = rcall('HMGET', spec_key, unpack(ids)), rcall('HMGET', attempts_key, unpack(ids))
  local states, owners = {unpack(NONE, 1, 2 * (nd + nc))}, {unpack(NONE, 1, 2 * nc)}
  local leases, tries = {unpack(NONE, 1, 2 * nc)}, {unpack(NONE, 1, 2 * nc)}
  local docs = mode ~= 'none' and {unpack(NONE, 1, 3 * nc + 1)}
  services_js = services_js or {}
  reply = {unpack(NONE, 1, 4 + 3 * nc)}
  reply[1], reply[2], reply[3], reply[4] = 'ok', hint, deadline, best
  for i = 1, nd do states[2 * i - 1], states[2 * i] = done[i], 'completed' end
  -- Per job, no formatting where the text is known: a first attempt is '1', the lease's index i one of
  -- SMALL's, the wait made once per distinct created_ms (jobs submitted in the same ms).
  local tail, last_created, waited = '|' .. worker .. '|' .. now_s, nil, nil
  local mid = docs and ',"worker":' .. cjson.encode(worker) .. ',"job":'
  local last_attempt, last_waited, head, prefix, service, middle
  local find, sub = string.find, string.sub
  for i, id in ipairs(ids) do
    local before = attempts[i]
    local attempt, attempt_s = 1, '1'
    if before then attempt = before + 1; attempt_s = int_s(attempt) end
    local at = 2 * i - 1
    states[2 * nd + at], states[2 * nd + at + 1] = id, 'claimed'
    tries[at], tries[at + 1] = id, attempt_s
    owners[at], owners[at + 1] = id, token .. '.' .. (SMALL[i] or int_s(i)) .. tail
    leases[at], leases[at + 1] = deadline_s, id
    if docs then
      -- The event as JSON text in three parts: '[{' or '},{' and the members up to the service, the service's
      -- and the worker's, the id; each string cjson's, each part made once per distinct value. The meta's
      -- service is read once per distinct prefix (shape|service|), then only its created_ms.
      local meta, created = metas[nd + i], nil
      if prefix and find(meta, prefix, 1, true) == 1 then
        created = sub(meta, #prefix + 1, find(meta, '|', #prefix + 1, true) - 1)
      else
        local new_service
        new_service, prefix = meta_prefix(meta)
        created = sub(meta, #prefix + 1, find(meta, '|', #prefix + 1, true) - 1)
        if new_service ~= service then
          service = new_service
          local js = services_js[service]
          if not js then js = cjson.encode(service); services_js[service] = js end
          middle = js .. mid
        end
      end
      if created ~= last_created then last_created, waited = created, int_s(now - created) end
      if attempt_s ~= last_attempt or waited ~= last_waited or i < 3 then
        last_attempt, last_waited = attempt_s, waited
        head = (i == 1 and '[{"wait_ms":"' or '},{"wait_ms":"') .. waited .. '","attempt":"' .. attempt_s
          .. '","service":'
      end
      docs[3 * i - 2], docs[3 * i - 1], docs[3 * i] = head, middle, cjson.encode(id)
    end
    reply[3 * i + 2], reply[3 * i + 3], reply[3 * i + 4] = id, specs[i], attempt
  end
  if docs then
    docs[3 * nc + 1] = '}]'
    emit_many(events_key, ARGV[3], maxlen, 'job_claimed', queue, 'claimed', nc, nil, table.concat(docs))
  end
  rcall('HSET', state_key, unpack(states))
  rcall('HSET', attempts_key, unpack(tries))
  rcall('HSET', owner_key, unpack(owners))
  rcall('ZADD', leases_key, unpack(leases))
  return {codes, reply, 0, 1}
end
