-- Purge COMPLETED/CANCELED workitems whose retention has run out, unless a subscription holds a
-- deletion lock. A purged UID leaves a tombstone so that it answers "gone" for another period.
--
-- ARGV 1 prefix, 2 cutoff (final-state time, ms), 3 batch size, 4 tombstone TTL (s), 5 now (ms)
-- Returns the purged UIDs.
local p = ARGV[1]
local purged = {}
for _, uid in ipairs(redis.call('ZRANGEBYSCORE', p .. 'final', '-inf', ARGV[2], 'LIMIT', 0, ARGV[3])) do
  local subs_key = p .. 'subs:' .. uid
  local locked = false
  for _, lock in ipairs(redis.call('HVALS', subs_key)) do
    if lock == '1' then locked = true; break end
  end
  if locked then
    redis.call('ZADD', p .. 'final', ARGV[5], uid)  -- look again after another retention period
  else
    local key = p .. 'wi:' .. uid
    local ix = redis.call('HGET', key, 'ix')
    if ix then
      for _, name in ipairs(cmsgpack.unpack(ix)) do redis.call('ZREM', p .. 'ix:' .. name, uid) end
    end
    for _, ae in ipairs(redis.call('HKEYS', subs_key)) do redis.call('SREM', p .. 'aesubs:' .. ae, uid) end
    redis.call('DEL', key, subs_key)
    redis.call('ZREM', p .. 'final', uid)
    redis.call('SET', p .. 'gone:' .. uid, '1', 'EX', ARGV[4])
    table.insert(purged, uid)
  end
end
return purged
