-- Subscribe one AE to existing workitems (global subscription), keeping any instance-specific
-- subscription it already has; optionally queue each one's State Report (deletion lock given).
-- ARGV 1 prefix, 2 AE, 3 lock '1'/'0', 4 send reports '1'/'0', 5 backlog, 6 now, 7.. UIDs
-- Returns how many workitems were subscribed.
local p, ae = ARGV[1], ARGV[2]
local count = 0
for i = 7, #ARGV do
  local uid = ARGV[i]
  local key = k_workitem(p, uid)
  if redis.call('EXISTS', key) == 1 then
    redis.call('HSETNX', k_subscribers_of(p, uid), ae, ARGV[3])
    redis.call('SADD', k_subscriptions_of(p, ae), uid)
    if ARGV[4] == '1' then
      enqueue(p, ae, ARGV[5], new_event(1, uid, redis.call('HGET', key, 'sr'), ARGV[6]))
    end
    count = count + 1
  end
end
redis.call('SADD', k_subscribers(p), ae)
notify(p)
return count
