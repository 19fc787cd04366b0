-- Workers ask to start items of one batch. KEYS: batch, events, then each item's
-- directory-file record. ARGV: base, now, batch_id, then the item ids, in KEYS' order.
-- Returns, per item, {'run', attempts, order, file record} | {'done', status} |
-- {'cancelled'} | {'missing'}; 'run' carries what the worker reads next, saving it a round
-- trip, and the order its job id derives from (`JobType::job_id`).
local batch_key, events_key = KEYS[1], KEYS[2]
local base, now, bid = ARGV[1], ARGV[2], ARGV[3]
local out = {}
local bst = redis.call('HGET', batch_key, 'status')
if bst == false or #ARGV < 4 then
  for i = 4, #ARGV do out[#out + 1] = { 'missing' } end
  return out
end
local ids = { unpack(ARGV, 4) }
local state = group_states(base, ids, 'pending')
local files = redis.call('MGET', unpack(KEYS, 3))
for j = 1, #ids do
  local iid = ids[j]
  local it = state(j)
  if it == nil then
    out[#out + 1] = { 'missing' }
  elseif TERMINAL_ITEM[it[1]] then
    out[#out + 1] = { 'done', it[1] }
  elseif bst == 'cancelled' then
    settle(batch_key, events_key, base, bid, iid, it[1], 'cancelled', it[2], now)
    out[#out + 1] = { 'cancelled' }
  elseif TERMINAL_BATCH[bst] then
    out[#out + 1] = { 'done', it[1] }
  else
    local attempts = tostring((tonumber(it[3]) or 0) + 1)
    local ik = base .. ':item:' .. iid
    if it[1] == 'pending' then
      redis.call('HSET', ik, 'status', 'processing', 'order', it[2], 'attempts', attempts,
        'started_at', now, 'updated_at', now)
      move(iid, it[2], status_key(base, 'pending'), status_key(base, 'processing'))
      emit_item(batch_key, events_key, 'running', bid, iid, 'processing', now)
    else
      redis.call('HSET', ik, 'attempts', attempts, 'updated_at', now)
    end
    bst = start_batch(batch_key, events_key, bid, bst, now)
    out[#out + 1] = { 'run', attempts, it[2], files[j] or '' }
  end
end
flush(batch_key, now)
return out
