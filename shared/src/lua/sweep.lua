-- Cancels up to `limit` pending items of a cancelled batch. KEYS: batch, events.
-- ARGV: base, now, batch_id, limit. Returns how many it cancelled.
local batch_key, events_key = KEYS[1], KEYS[2]
local base, now, bid, limit = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
if redis.call('HGET', batch_key, 'status') ~= 'cancelled' then return 0 end
local ids = redis.call('ZRANGE', base .. ':st:pending', 0, limit - 1, 'WITHSCORES')
for i = 1, #ids, 2 do
  settle(batch_key, events_key, base, bid, ids[i], 'pending', 'cancelled', ids[i + 1], now)
end
flush(batch_key, now)
return #ids / 2
