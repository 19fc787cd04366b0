-- The dispatcher published every item. KEYS: batch, events. ARGV: base, now, batch_id.
-- Returns the batch status afterwards, or '' if the batch is missing.
local batch_key, events_key = KEYS[1], KEYS[2]
local now, bid = ARGV[2], ARGV[3]
local st = redis.call('HGET', batch_key, 'status')
if st == false then return '' end
if redis.call('HGET', batch_key, 'expanded') ~= '1' then
  -- The total is what was actually registered, so processed == total holds at the end.
  local registered = redis.call('HGET', batch_key, 'registered') or '0'
  redis.call('HSET', batch_key, 'expanded', 1, 'total', registered, 'updated_at', now)
end
if st == 'pending' then
  redis.call('HSET', batch_key, 'status', 'dispatched')
end
maybe_finish(batch_key, events_key, bid, now)
return redis.call('HGET', batch_key, 'status')
