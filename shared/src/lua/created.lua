-- A batch was just written (in the same transaction): its first event. KEYS: batch, events.
-- ARGV: base, now, batch_id.
local batch_key, events_key = KEYS[1], KEYS[2]
local now, bid = ARGV[2], ARGV[3]
emit(batch_key, events_key, 'batch.pending', bid, '', 'pending', now)
return 1
