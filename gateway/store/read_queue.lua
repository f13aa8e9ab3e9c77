-- Read an AE's undelivered events, but only for the current owner of its delivery on this
-- transport: a reader that lost its lease learns it here, before sending anything twice.
-- KEYS[1] lease key, KEYS[2] queue stream; ARGV 1 owner id, 2 exclusive start id, 3 count
-- Returns {1, entries} or {0} when the lease belongs to someone else.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {0} end
return {1, redis.call('XRANGE', KEYS[2], '(' .. ARGV[2], '+', 'COUNT', ARGV[3])}
