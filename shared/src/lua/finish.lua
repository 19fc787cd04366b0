-- Records the outcomes of items of one batch, each once. KEYS: batch, events, then each
-- item's file run list. ARGV: base, now, batch_id, then per item, in KEYS' order: item_id,
-- outcome (completed|failed|skipped), error_message, skip_reason, result, run record ('' for
-- none). Returns, per item, 'recorded' | 'duplicate' | 'missing'.
local batch_key, events_key = KEYS[1], KEYS[2]
local base, now, bid = ARGV[1], ARGV[2], ARGV[3]
local out = {}
local recorded = false
for i = 4, #ARGV, 6 do
  local iid, outcome = ARGV[i], ARGV[i + 1]
  local ik = base .. ':item:' .. iid
  local it = redis.call('HMGET', ik, 'status', 'order')
  if it[1] == false then
    out[#out + 1] = 'missing'
  elseif TERMINAL_ITEM[it[1]] then
    out[#out + 1] = 'duplicate'
  else
    settle(batch_key, events_key, base, bid, iid, it[1], outcome, it[2], now,
      ARGV[i + 2], ARGV[i + 3], ARGV[i + 4])
    local run = ARGV[i + 5]
    if run ~= '' then redis.call('RPUSH', KEYS[3 + (i - 4) / 6], run) end
    out[#out + 1] = 'recorded'
    recorded = true
  end
end
flush(batch_key, now)
if recorded then maybe_finish(batch_key, events_key, bid, now) end
return out
