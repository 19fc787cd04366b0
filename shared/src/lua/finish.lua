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
-- instead, as `claim` would have. In a lean batch (`lean` = '1', set at create by every
-- dispatcher since the scheme began) a completed direct outcome writes no item hash.
-- Returns, per item, 'recorded' | 'duplicate' | 'missing' | 'cancelled' | 'claim' (direct, but
-- not pending or another job id: the worker claims it the usual way).
local batch_key, events_key = KEYS[1], KEYS[2]
local base, now, bid = ARGV[1], ARGV[2], ARGV[3]
local out = {}
local recorded = false
local bst = nil
local lean = batch_fixed(batch_key).lean
-- A lean batch's items carry no job id of their own, and one without a hash is pending
-- exactly while it is in `:st:pending`: one ZMSCORE there for every direct outcome of the
-- run, instead of each one's hash and order.
local pending_order = {}
if lean then
  local ids = {}
  for i = 4, #ARGV, 7 do
    if ARGV[i + 6] ~= '' then ids[#ids + 1] = ARGV[i] end
  end
  if #ids > 0 then
    local scores = redis.call('ZMSCORE', status_key(base, 'pending'), unpack(ids))
    for j = 1, #ids do pending_order[ids[j]] = scores[j] end
  end
end
for i = 4, #ARGV, 7 do
  local iid, outcome, direct = ARGV[i], ARGV[i + 1], ARGV[i + 6]
  local it
  if direct ~= '' and lean and settled[iid] == nil then
    local order = pending_order[iid]
    if order then it = { 'pending', order, derived_job_id(batch_key, bid, order) } end
  else
    -- Also an item settled earlier in this run, which the ZMSCORE still saw pending.
    it = item_state(batch_key, base, bid, base .. ':item:' .. iid, iid, direct ~= '')
  end
  local attempts, batch_state = nil, nil
  if it ~= nil and direct ~= '' then
    if bst == nil then bst = batch_fixed(batch_key).status end
    attempts, batch_state = next_attempt(it[4]), bst
  end
  if it == nil and direct ~= '' and lean then
    -- Not pending (or not registered): the claim path tells which.
    out[#out + 1] = 'claim'
  elseif it == nil or batch_state == false then
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
    -- A lean item completed straight from its message keeps no hash: its result, which the
    -- worker stamps with `completed_at`, is its record (`records::lean_record`), and an item
    -- without a hash that has a result is completed (`item_state`).
    local bare = lean and attempts ~= nil and outcome == 'completed' and ARGV[i + 4] ~= ''
    settle(batch_key, events_key, base, bid, iid, it[1], outcome, it[2], now,
      ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], attempts, ARGV[i + 5], bare)
    out[#out + 1] = 'recorded'
    recorded = true
  end
end
local after = flush(batch_key, now)
if recorded then maybe_finish(batch_key, events_key, bid, now, after) end
return out
