-- Registers a page of items as pending, once each. KEYS: batch, events.
-- ARGV: base, now, batch_id, then (item_id, order, refusal) groups. A pending item is its
-- entry in `:items` and `:st:pending` alone: its hash is written when it leaves pending
-- (`item_state` reads one that has none), its name is its file's, and its job id derives
-- from the batch and the order (`JobType::job_id`, in Rust only). An item with a refusal (its file is
-- unknown) is failed at once with it as the error.
-- Returns the number newly registered, -1 if the batch is missing, -2 if it is terminal.
local batch_key, events_key = KEYS[1], KEYS[2]
local base, now, bid = ARGV[1], ARGV[2], ARGV[3]
local b = redis.call('HMGET', batch_key, 'status', 'registered_to')
local st = b[1]
if st == false then return -1 end
if TERMINAL_BATCH[st] then return -2 end
-- `registered_to` is the highest order registered so far. Orders are unique within a batch,
-- so a chunk that starts above it holds no registered item and needs no lookup per item; a
-- page registered again after a crash starts below it and is checked item by item.
local low, high = nil, nil
for i = 5, #ARGV, 3 do
  local o = tonumber(ARGV[i])
  if low == nil or o < low then low = o end
  if high == nil or o > high then high = o end
end
local hw = tonumber(b[2])
local fresh = low ~= nil and (hw == nil or low > hw)
local n = 0
local items_key = base .. ':items'
for i = 4, #ARGV, 3 do
  local iid, order, refusal = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if fresh or redis.call('ZSCORE', items_key, iid) == false then
    move(iid, order, nil, items_key)
    move(iid, order, nil, status_key(base, 'pending'))
    emit_item(batch_key, events_key, 'pending', bid, iid, 'pending', now)
    if refusal ~= '' then
      settle(batch_key, events_key, base, bid, iid, 'pending', 'failed', order, now, refusal)
    end
    n = n + 1
  end
end
flush(batch_key, now)
if n > 0 then redis.call('HINCRBY', batch_key, 'registered', n) end
if high ~= nil and (hw == nil or high > hw) then
  redis.call('HSET', batch_key, 'registered_to', high)
end
return n
