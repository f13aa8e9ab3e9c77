-- Advance a delivery cursor, but only for the current owner of that AE's delivery.
-- ARGV 1 prefix, 2 transport (ws|dimse), 3 AE, 4 owner id, 5 cursor value
local p = ARGV[1]
if redis.call('GET', p .. 'own:' .. ARGV[2] .. ':' .. ARGV[3]) ~= ARGV[4] then return 0 end
redis.call('SET', p .. 'cur:' .. ARGV[2] .. ':' .. ARGV[3], ARGV[5])
return 1
