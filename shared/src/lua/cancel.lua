-- Cancels a batch. KEYS: batch, events. ARGV: base, now, batch_id, reason.
-- Returns {'cancelled'} | {'terminal', status} | {'missing'}.
local batch_key, events_key = KEYS[1], KEYS[2]
local now, bid, reason = ARGV[2], ARGV[3], ARGV[4]
local st = redis.call('HGET', batch_key, 'status')
if st == false then return { 'missing' } end
if TERMINAL_BATCH[st] then return { 'terminal', st } end
-- Nothing registers after this, so the items registered so far are the batch.
local registered = redis.call('HGET', batch_key, 'registered') or '0'
redis.call('HSET', batch_key, 'status', 'cancelled', 'completed_at', now, 'updated_at', now,
  'expanded', 1, 'total', registered)
if reason ~= '' then redis.call('HSET', batch_key, 'cancel_reason', reason) end
emit(batch_key, events_key, 'batch.cancelled', bid, '', 'cancelled', now)
return { 'cancelled' }
