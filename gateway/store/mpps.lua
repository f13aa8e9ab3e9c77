-- Store one MPPS instance alone (no workitem change), compare-and-set on its version.
-- KEYS[1]  the MPPS hash
-- ARGV     1 expected version (0 = new), 2 dataset blob, 3 linked workitem ('' = none),
--          4 Transaction UID ('' = none), 5 note, 6 TTL in seconds ('' = none)
-- Returns  {1, new version} | {0, current version} conflict
local current = tonumber(redis.call('HGET', KEYS[1], 'v') or '0')
if current ~= tonumber(ARGV[1]) then return {0, current} end
save_mpps(KEYS[1], current + 1, ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6])
return {1, current + 1}
