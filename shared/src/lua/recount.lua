-- Re-files a chunk of items under the status their own hash says (pending without one).
-- KEYS: batch, events. ARGV: base, now, batch_id, then item ids.
-- A script that changes an item's status moves it between the status sets in the same step,
-- so an item re-filed here stays filed right while outcomes keep landing (`set_counts`).
local base = ARGV[1]
local statuses = { 'pending', 'processing', 'completed', 'failed', 'skipped', 'cancelled' }
for i = 4, #ARGV do
  local iid = ARGV[i]
  local it = item_state(base, iid)
  if it then
    for _, s in ipairs(statuses) do
      if s ~= it[1] then redis.call('ZREM', status_key(base, s), iid) end
    end
    redis.call('ZADD', status_key(base, it[1]), it[2] or 0, iid)
  end
end
return 0
