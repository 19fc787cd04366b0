-- Sets a batch's counters to the sizes of its status sets once `recount` has re-filed every
-- item, then finishes it if that is now due. Read and written in one step, so an outcome
-- recorded at any time before or after is counted once. KEYS: batch, events.
-- ARGV: base, now, batch_id. Returns the set sizes in `ItemStatus::ALL` order ({} if no batch).
local batch_key, events_key = KEYS[1], KEYS[2]
local base, now, bid = ARGV[1], ARGV[2], ARGV[3]
if redis.call('EXISTS', batch_key) == 0 then return {} end
local sizes = {}
for _, s in ipairs({ 'pending', 'processing', 'completed', 'failed', 'skipped', 'cancelled' }) do
  sizes[#sizes + 1] = redis.call('ZCARD', status_key(base, s))
end
local c, f, s, x = sizes[3], sizes[4], sizes[5], sizes[6]
redis.call('HSET', batch_key, 'completed', c, 'failed', f, 'skipped', s, 'cancelled', x,
  'processed', c + f + s + x, 'updated_at', now)
maybe_finish(batch_key, events_key, bid, now)
return sizes
