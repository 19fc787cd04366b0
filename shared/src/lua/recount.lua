-- Re-files a chunk of items under the status their own hash says (pending without one), and
-- tallies them. KEYS: batch, events. ARGV: base, now, batch_id, then item ids.
-- Returns {pending, processing, completed, failed, skipped, cancelled}.
local base = ARGV[1]
local order = { 'pending', 'processing', 'completed', 'failed', 'skipped', 'cancelled' }
local tally = { pending = 0, processing = 0, completed = 0, failed = 0, skipped = 0, cancelled = 0 }
for i = 4, #ARGV do
  local iid = ARGV[i]
  local it = item_state(base, iid)
  if it and tally[it[1]] ~= nil then
    for _, s in ipairs(order) do
      if s ~= it[1] then redis.call('ZREM', base .. ':st:' .. s, iid) end
    end
    redis.call('ZADD', base .. ':st:' .. it[1], it[2] or 0, iid)
    tally[it[1]] = tally[it[1]] + 1
  end
end
local out = {}
for _, s in ipairs(order) do table.insert(out, tally[s]) end
return out
