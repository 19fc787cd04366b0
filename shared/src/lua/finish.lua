-- Records the outcomes of claimed items of one batch, each once. KEYS: batch, events.
-- ARGV: base, now, batch_id, then per item: item_id, outcome (completed|failed|skipped),
-- error_message, skip_reason, result, pages, pages_ocr ('' for none). An item of a cancelled batch that
-- was already running is recorded and counted like any other.
-- Returns, per item, 'recorded' | 'duplicate' (already terminal) | 'missing' (no such batch
-- or item).
local batch_key, events_key = KEYS[1], KEYS[2]
local base, now, bid = ARGV[1], ARGV[2], ARGV[3]
local out = {}
local recorded = false
local exists = redis.call('EXISTS', batch_key) == 1
local ids = {}
for i = 4, #ARGV, 7 do ids[#ids + 1] = ARGV[i] end
local state = exists and #ids > 0 and group_states(base, ids, 'processing')
for i = 4, #ARGV, 7 do
  local iid = ARGV[i]
  local it = state and state((i - 4) / 7 + 1)
  if not it then
    out[#out + 1] = 'missing'
  elseif TERMINAL_ITEM[it[1]] then
    out[#out + 1] = 'duplicate'
  else
    settle(batch_key, events_key, base, bid, iid, it[1], ARGV[i + 1], it[2], now,
      ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], ARGV[i + 5], ARGV[i + 6])
    out[#out + 1] = 'recorded'
    recorded = true
  end
end
local after = flush(batch_key, now)
if recorded then maybe_finish(batch_key, events_key, bid, now, after) end
return out
