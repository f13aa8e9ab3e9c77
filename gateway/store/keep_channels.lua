-- Renew the leases and registrations of one process's open WebSocket channels in one step
-- (every couple of seconds, rather than two commands per channel).
-- ARGV 1 prefix, 2 lease ttl (ms), 3 registration expiry (unix time, s),
--      4 msgpack array of {AE, lease owner id, channel id}
-- Returns per channel 1, or 0 when another connection has taken the AE over (nothing renewed).
local p, ttl, expiry = ARGV[1], ARGV[2], ARGV[3]
local out = {}
for _, channel in ipairs(cmsgpack.unpack(ARGV[4])) do
  local ae, owner = channel[1], channel[2]
  local lease = k_lease(p, 'ws', ae)
  local holder = redis.call('GET', lease)
  if holder == owner or holder == false then
    redis.call('SET', lease, owner, 'PX', ttl)
    redis.call('ZADD', k_channels(p, ae), expiry, channel[3])
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
