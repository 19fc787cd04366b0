-- A worker asks to start an item. KEYS: batch, events, the item's directory-file record.
-- ARGV: base, now, batch_id, item_id.
-- Returns {'run', attempts, job_id, file record} | {'done', status} | {'cancelled'} | {'missing'};
-- 'run' carries what the worker reads next, saving it a round trip.
local batch_key, events_key, dfile_key = KEYS[1], KEYS[2], KEYS[3]
local base, now, bid, iid = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local ik = base .. ':item:' .. iid
local bst = redis.call('HGET', batch_key, 'status')
if bst == false then return { 'missing' } end
local it = redis.call('HMGET', ik, 'status', 'order', 'job_id')
if it[1] == false then return { 'missing' } end
if TERMINAL_ITEM[it[1]] then return { 'done', it[1] } end
if bst == 'cancelled' then
  settle(batch_key, events_key, base, bid, iid, it[1], 'cancelled', it[2], now, {})
  return { 'cancelled' }
end
if TERMINAL_BATCH[bst] then return { 'done', it[1] } end
local attempts = redis.call('HINCRBY', ik, 'attempts', 1)
if it[1] == 'pending' then
  redis.call('HSET', ik, 'status', 'processing', 'started_at', now, 'updated_at', now)
  redis.call('ZREM', base .. ':st:pending', iid)
  redis.call('ZADD', base .. ':st:processing', it[2], iid)
  emit(batch_key, events_key, batch_fixed(batch_key).job_type .. '.running', bid, iid,
    'processing', now)
else
  redis.call('HSET', ik, 'updated_at', now)
end
if bst == 'pending' or bst == 'dispatched' then
  redis.call('HSET', batch_key, 'status', 'running', 'started_at', now, 'updated_at', now)
  emit(batch_key, events_key, 'batch.running', bid, '', 'running', now)
end
return { 'run', attempts, it[3] or '', redis.call('GET', dfile_key) or '' }
