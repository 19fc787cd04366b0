-- Records the outcomes of items of one batch, each once. KEYS: batch, events. ARGV: base,
-- now, batch_id, then per item: item_id, outcome (completed|failed|skipped), error_message,
-- skip_reason, result, pages ('' for none), direct ('' or the item's job id). A file's
-- processing results are read from its items (`P:dir:<id>:batches`), so nothing is written
-- per file.
--
-- A direct outcome is of an item no claim started (a tiny file a worker parsed straight from
-- its message): it is recorded only if the item is still pending and its job id is the one
-- given, and its start is recorded with it (attempt, `started_at`, the `running` event, the
-- batch's start), all that `claim` would have done. The item of a cancelled batch is cancelled
-- instead, as `claim` would have.
-- Returns, per item, 'recorded' | 'duplicate' | 'missing' | 'cancelled' | 'claim' (direct, but
-- not pending or another job id: the worker claims it the usual way).
local batch_key, events_key = KEYS[1], KEYS[2]
local base, now, bid = ARGV[1], ARGV[2], ARGV[3]
local out = {}
local recorded = false
local bst = nil
for i = 4, #ARGV, 7 do
  local iid, outcome, direct = ARGV[i], ARGV[i + 1], ARGV[i + 6]
  local ik = base .. ':item:' .. iid
  local it = item_state(batch_key, base, bid, ik, iid, direct ~= '')
  local attempts, batch_state = nil, nil
  if it ~= nil and direct ~= '' then
    if bst == nil then bst = redis.call('HGET', batch_key, 'status') end
    attempts, batch_state = next_attempt(it[4]), bst
  end
  if it == nil or batch_state == false then
    out[#out + 1] = 'missing'
  elseif TERMINAL_ITEM[it[1]] then
    out[#out + 1] = 'duplicate'
  elseif direct ~= '' and (it[1] ~= 'pending' or it[3] ~= direct) then
    out[#out + 1] = 'claim'
  elseif batch_state == 'cancelled' then
    settle(batch_key, events_key, base, bid, iid, it[1], 'cancelled', it[2], now)
    out[#out + 1] = 'cancelled'
  elseif batch_state and TERMINAL_BATCH[batch_state] then
    out[#out + 1] = 'duplicate'
  else
    if attempts then
      bst = start_batch(batch_key, events_key, bid, bst, now)
      emit_item(batch_key, events_key, 'running', bid, iid, 'processing', now)
    end
    settle(batch_key, events_key, base, bid, iid, it[1], outcome, it[2], now,
      ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], attempts, ARGV[i + 5])
    out[#out + 1] = 'recorded'
    recorded = true
  end
end
flush(batch_key, now)
if recorded then maybe_finish(batch_key, events_key, bid, now) end
return out
