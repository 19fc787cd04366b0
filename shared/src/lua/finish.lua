-- Records an item's outcome once. KEYS: batch, events, runs list of the file.
-- ARGV: base, now, batch_id, item_id, outcome (completed|failed|skipped), error_message,
-- skip_reason, result, run record ('' for none).
-- Returns 'recorded' | 'duplicate' | 'missing'.
local batch_key, events_key, runs_key = KEYS[1], KEYS[2], KEYS[3]
local base, now, bid, iid, outcome = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local ik = base .. ':item:' .. iid
local it = redis.call('HMGET', ik, 'status', 'order')
if it[1] == false then return 'missing' end
if TERMINAL_ITEM[it[1]] then return 'duplicate' end
settle(batch_key, events_key, base, bid, iid, it[1], outcome, it[2], now,
  { error_message = ARGV[6], skip_reason = ARGV[7], result = ARGV[8] })
if ARGV[9] ~= '' then redis.call('RPUSH', runs_key, ARGV[9]) end
maybe_finish(batch_key, events_key, bid, now)
return 'recorded'
