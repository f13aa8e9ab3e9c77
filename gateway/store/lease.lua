-- Take or keep a lease. ARGV 1 key, 2 owner id, 3 ttl (ms), 4 '1' = take it even from another owner
local holder = redis.call('GET', ARGV[1])
if holder == ARGV[2] or holder == false or ARGV[4] == '1' then
  redis.call('SET', ARGV[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
