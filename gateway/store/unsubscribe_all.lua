-- Remove up to ARGV[3] of an AE's per-workitem subscriptions; the caller repeats until 0.
-- ARGV 1 prefix, 2 AE, 3 batch size. Returns how many were removed.
local p, ae = ARGV[1], ARGV[2]
local uids = redis.call('SPOP', k_subscriptions_of(p, ae), ARGV[3])
for _, uid in ipairs(uids) do redis.call('HDEL', k_subscribers_of(p, uid), ae) end
return #uids
