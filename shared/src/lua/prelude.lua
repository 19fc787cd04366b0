-- Shared by every batch script. A batch's keys all derive from `base` = P:batch:{<id>}.
local TERMINAL_BATCH = { completed = true, failed = true, cancelled = true }
local TERMINAL_ITEM = { completed = true, failed = true, skipped = true, cancelled = true }

-- The batch fields fixed at create (`job_type`, `hooks`), read once per script run: every
-- script works on one batch, and a redis.call costs more than the lookup it does.
local fixed = nil
local function batch_fixed(batch_key)
  if fixed == nil then
    local f = redis.call('HMGET', batch_key, 'job_type', 'hooks')
    fixed = { job_type = f[1], hooks = f[2] }
  end
  return fixed
end

-- Appends an event to the outbox with the batch's next sequence number, if an endpoint of the
-- batch wants its type: `hooks` is '*' or the wanted types between spaces, set at create.
-- Without subscribers nothing is written; that is most batches, and the stream would cost
-- two entries per item. No MAXLEN: the outbox trims what its group has acknowledged, and a
-- length cap would drop events no replica has read yet.
local function emit(batch_key, events_key, etype, bid, iid, status, now)
  local hooks = batch_fixed(batch_key).hooks
  if not hooks then return end
  if hooks ~= '*' and not string.find(hooks, ' ' .. etype .. ' ', 1, true) then return end
  local seq = redis.call('HINCRBY', batch_key, 'seq', '1')
  redis.call('XADD', events_key, '*',
    'type', etype, 'batch_id', bid, 'item_id', iid, 'status', status, 'seq', seq, 'at', now)
end

-- An item event, `<job_type>.<what>`: the type is built only if the batch has endpoints, since
-- most batches have none and a string built per item is work for nothing.
local function emit_item(batch_key, events_key, what, bid, iid, status, now)
  local f = batch_fixed(batch_key)
  if not f.hooks then return end
  emit(batch_key, events_key, f.job_type .. '.' .. what, bid, iid, status, now)
end

-- An item's state, {status, order, attempts}: its hash, which `claim` (or `settle`) writes
-- when the item leaves pending; a registered item without one is pending. Its order is its
-- score in `:items` (`claim` copies it into the hash). The status sets are not asked, since
-- `recount` uses this to repair them. nil if the batch never registered the item.
local function item_state(base, iid)
  local it = redis.call('HMGET', base .. ':item:' .. iid, 'status', 'order', 'attempts')
  if not (it[1] and it[2]) then
    local order = redis.call('ZSCORE', base .. ':items', iid)
    if order == false then return nil end
    it[1] = it[1] or 'pending'
    it[2] = order
  end
  return it
end

-- A status set's key, built once per script run rather than once per item moved.
local status_keys = {}
local function status_key(base, status)
  local k = status_keys[status]
  if k == nil then
    k = base .. ':st:' .. status
    status_keys[status] = k
  end
  return k
end

-- The states of a group's items in turn, as `item_state` gives them, with one ZMSCORE in the
-- status set where nearly all of them are (`pending` for claims, `processing` for outcomes)
-- rather than two lookups each. An item met before in the same run (a duplicate in the
-- group) is read from its hash, since its set moves wait for `flush`.
local function group_states(base, ids, likely)
  local scores = redis.call('ZMSCORE', status_key(base, likely), unpack(ids))
  local seen = {}
  return function(j)
    local iid = ids[j]
    local fresh = not seen[iid]
    seen[iid] = true
    if fresh and scores[j] then return { likely, scores[j], false } end
    return item_state(base, iid)
  end
end

local ITEM_EVENT = { processing = 'running', completed = 'success', failed = 'error',
  skipped = 'error', cancelled = 'cancelled' }

-- Sorted-set moves, counter increments and results gathered during a script run and written
-- by `flush`: one variadic ZADD/ZREM per set, one HSET of the results and one of the
-- counters, so a script that settles 25 items writes each once instead of 25 times. Results
-- go to the batch's results hash, not the item hashes: a result is longer than
-- `hash-max-listpack-value` (64 bytes), and one such field converts an item's whole hash
-- from a listpack to a hash table (6% of the scripts' instructions, callgrind). Item hashes
-- are written at once, so a later step of the same run (a duplicate delivery in the same
-- group) already sees the new status.
local additions, removals, counts, results = {}, {}, {}, {}
local function move(iid, order, from_key, to_key)
  local a = additions[to_key]
  if a == nil then a = {}; additions[to_key] = a end
  a[#a + 1] = order
  a[#a + 1] = iid
  if from_key then
    local r = removals[from_key]
    if r == nil then r = {}; removals[from_key] = r end
    r[#r + 1] = iid
  end
end
local function count(field, n)
  counts[field] = (counts[field] or 0) + (n or 1)
end

-- Writes what `move` and `count` gathered; every script that moves items calls it before it
-- returns and before anything reads a counter (`maybe_finish`). Additions go first, so an
-- item moved twice in one run (registered as pending, then failed at once) ends in the last
-- set only: its removal from the middle set follows its addition there. Counters are read
-- once and written once with `updated_at` (one HMGET and one HSET rather than an HINCRBY
-- each and an HSET; the script runs alone, so the read stays current); the read brings what
-- `maybe_finish` needs too, which `flush` returns as it stands after the write (nil when no
-- counter moved).
local FINISH_FIELDS = { 'status', 'expanded', 'total', 'processed', 'failed' }
local function flush(batch_key, now)
  for key, scored in pairs(additions) do
    redis.call('ZADD', key, unpack(scored))
  end
  for key, ids in pairs(removals) do
    redis.call('ZREM', key, unpack(ids))
  end
  if #results > 0 then redis.call('HSET', batch_key .. ':results', unpack(results)) end
  local after = nil
  if next(counts) ~= nil then
    local fields = { unpack(FINISH_FIELDS) }
    for field in pairs(counts) do
      if field ~= 'processed' and field ~= 'failed' then fields[#fields + 1] = field end
    end
    local cur = redis.call('HMGET', batch_key, unpack(fields))
    local set = {}
    for i = 4, #fields do
      local n = counts[fields[i]]
      if n then
        cur[i] = tostring((tonumber(cur[i]) or 0) + n)
        set[#set + 1] = fields[i]
        set[#set + 1] = cur[i]
      end
    end
    set[#set + 1] = 'updated_at'
    set[#set + 1] = now
    redis.call('HSET', batch_key, unpack(set))
    after = { cur[1], cur[2], cur[3], cur[4], cur[5] }
  end
  additions, removals, counts, results = {}, {}, {}, {}
  return after
end

-- Moves a non-terminal item to a terminal status and counts it once (when flushed), with its
-- pages and OCR'd pages into the batch's `pages` and `pages_ocr`. The outcome's fields that
-- are not '' (or nil) are written with the status (the result when flushed).
local function settle(batch_key, events_key, base, bid, iid, from, to, order, now,
                      error_message, skip_reason, result, pages, pages_ocr)
  if result and result ~= '' then
    results[#results + 1] = iid
    results[#results + 1] = result
  end
  move(iid, order, status_key(base, from), status_key(base, to))
  count('processed')
  count(to)
  emit_item(batch_key, events_key, ITEM_EVENT[to], bid, iid, to, now)
  local ik = base .. ':item:' .. iid
  local set = { 'status', to, 'order', order, 'completed_at', now, 'updated_at', now }
  if error_message and error_message ~= '' then
    set[#set + 1] = 'error_message'
    set[#set + 1] = error_message
  end
  if skip_reason and skip_reason ~= '' then
    set[#set + 1] = 'skip_reason'
    set[#set + 1] = skip_reason
  end
  if pages and pages ~= '' then
    set[#set + 1] = 'pages'
    set[#set + 1] = pages
    count('pages', tonumber(pages))
  end
  if pages_ocr and pages_ocr ~= '' and pages_ocr ~= '0' then
    count('pages_ocr', tonumber(pages_ocr))
  end
  redis.call('HSET', ik, unpack(set))
end

-- The batch's first started item makes it running, once.
local function start_batch(batch_key, events_key, bid, bst, now)
  if bst == 'pending' or bst == 'dispatched' then
    redis.call('HSET', batch_key, 'status', 'running', 'started_at', now, 'updated_at', now)
    emit(batch_key, events_key, 'batch.running', bid, '', 'running', now)
    return 'running'
  end
  return bst
end

-- Finishes the batch exactly once: expansion done and every item terminal. `b`: the batch's
-- FINISH_FIELDS as they stand, when the caller has them (what `flush` returned).
local function maybe_finish(batch_key, events_key, bid, now, b)
  b = b or redis.call('HMGET', batch_key, unpack(FINISH_FIELDS))
  if b[1] == false or TERMINAL_BATCH[b[1]] then return end
  if b[2] ~= '1' then return end
  local total, processed, failed = tonumber(b[3]), tonumber(b[4] or '0'), tonumber(b[5] or '0')
  if processed < total then return end
  local final, event = 'completed', 'batch.success'
  if total > 0 and failed == total then final, event = 'failed', 'batch.error' end
  redis.call('HSET', batch_key, 'status', final, 'completed_at', now, 'updated_at', now)
  if redis.call('HEXISTS', batch_key, 'started_at') == 0 then
    redis.call('HSET', batch_key, 'started_at', now)
  end
  emit(batch_key, events_key, event, bid, '', final, now)
end
