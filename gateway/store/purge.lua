-- Purge COMPLETED/CANCELED workitems whose retention has run out, unless a subscription holds a
-- deletion lock. A purged UID leaves a tombstone so that it answers "gone" for another period.
--
-- ARGV 1 prefix, 2 cutoff (final-state time, ms), 3 batch size, 4 tombstone TTL (s), 5 now (ms)
-- Returns the purged UIDs.
local p = ARGV[1]
local purged = {}
for _, uid in ipairs(redis.call('ZRANGEBYSCORE', k_final(p), '-inf', ARGV[2], 'LIMIT', 0, ARGV[3])) do
  local subs_key = k_subscribers_of(p, uid)
  local locked = false
  for _, lock in ipairs(redis.call('HVALS', subs_key)) do
    if lock == '1' then locked = true; break end
  end
  if locked then
    redis.call('ZADD', k_final(p), ARGV[5], uid)  -- look again after another retention period
  else
    local key = k_workitem(p, uid)
    local ix = redis.call('HGET', key, 'ix')
    if ix then
      for _, name in ipairs(cmsgpack.unpack(ix)) do redis.call('ZREM', k_index(p, name), uid) end
    end
    for _, ae in ipairs(redis.call('HKEYS', subs_key)) do redis.call('SREM', k_subscriptions_of(p, ae), uid) end
    redis.call('DEL', key, subs_key)
    redis.call('ZREM', k_final(p), uid)
    redis.call('SET', k_tombstone(p, uid), '1', 'EX', ARGV[4])
    table.insert(purged, uid)
  end
end
return purged
