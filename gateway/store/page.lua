-- One page of an exact single-index search, in one round trip: how many match, and the stored
-- datasets of the page in search order (count, range and reads see the same moment).
-- KEYS 1 the index (a sorted set scored by Scheduled Procedure Step Start DateTime)
-- ARGV 1 key prefix, 2 min score, 3 max score, 4 offset, 5 limit
-- Returns {total, dataset1, dataset2, ...}
local total = redis.call('ZCOUNT', KEYS[1], ARGV[2], ARGV[3])
local out = {total}
if tonumber(ARGV[4]) < total then
  local uids = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[2], ARGV[3], 'LIMIT', ARGV[4], ARGV[5])
  for _, uid in ipairs(uids) do
    local blob = redis.call('HGET', k_workitem(ARGV[1], uid), 'd')
    if blob then  -- never false inside one script; kept for safety against a broken index
      out[#out + 1] = blob
    end
  end
end
return out
