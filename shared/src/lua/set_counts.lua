-- Overwrites a batch's counters with a recount, then finishes it if that is now due.
-- KEYS: batch, events. ARGV: base, now, batch_id, completed, failed, skipped, cancelled.
local batch_key, events_key = KEYS[1], KEYS[2]
local now, bid = ARGV[2], ARGV[3]
if redis.call('EXISTS', batch_key) == 0 then return 0 end
local c, f, s, x = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
redis.call('HSET', batch_key, 'completed', c, 'failed', f, 'skipped', s, 'cancelled', x,
  'processed', c + f + s + x, 'updated_at', now)
maybe_finish(batch_key, events_key, bid, now)
return 1
