-- Give up a lease, but only if it is still ours: between a GET and a DEL from the client another
-- reader could have taken it over, and would lose it.
-- ARGV 1 key, 2 owner id. Returns 1 when released.
if redis.call('GET', ARGV[1]) == ARGV[2] then
  return redis.call('DEL', ARGV[1])
end
return 0
