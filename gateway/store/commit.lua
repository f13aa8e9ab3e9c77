-- Atomically commit one workitem change: compare-and-set on its version, rewrite its secondary
-- indexes, apply auto-subscriptions and queue its events for every subscriber, all in one step.
--
-- KEYS[1]  workitem hash
-- ARGV     1 prefix, 2 uid, 3 expected version (0 = create), 4 dataset blob ('' = unchanged),
--          5 state, 6 transaction uid ('' = none), 7 performer AE ('' = none), 8 score,
--          9 index names (msgpack array), 10 final-state time ('' = not final),
--          11 expected global-subscription version ('' = unchecked),
--          12 subscriptions to add (msgpack array of {ae, lock}),
--          13 events (msgpack array of {type, info blob, extra recipients, required}),
--          14 per-subscriber backlog, 15 now (ms)
-- Returns  {1, new version} | {0, current version} conflict | {2} purged UID | {3} no recipient
local p, uid, key = ARGV[1], ARGV[2], KEYS[1]
local current = tonumber(redis.call('HGET', key, 'v') or '0')
if current ~= tonumber(ARGV[3]) then return {0, current} end
if current == 0 and redis.call('EXISTS', p .. 'gone:' .. uid) == 1 then return {2} end
if ARGV[11] ~= '' and (redis.call('GET', p .. 'gver') or '0') ~= ARGV[11] then
  return {0, current}
end

local subs_key = p .. 'subs:' .. uid
for _, sub in ipairs(cmsgpack.unpack(ARGV[12])) do
  redis.call('HSET', subs_key, sub[1], sub[2])
  redis.call('SADD', p .. 'aesubs:' .. sub[1], uid)
end

local events = cmsgpack.unpack(ARGV[13])
local recipients = {}
for i, ev in ipairs(events) do
  local seen, list = {}, {}
  for _, ae in ipairs(redis.call('HKEYS', subs_key)) do seen[ae] = true; table.insert(list, ae) end
  for _, ae in ipairs(ev[3]) do
    if not seen[ae] then seen[ae] = true; table.insert(list, ae) end
  end
  if ev[4] and #list == 0 then return {3} end
  recipients[i] = list
end

local version = current + 1
if ARGV[4] ~= '' then
  local old = redis.call('HGET', key, 'ix')
  if old then
    for _, name in ipairs(cmsgpack.unpack(old)) do redis.call('ZREM', p .. 'ix:' .. name, uid) end
  end
  local score = ARGV[8]
  redis.call('HSET', key, 'd', ARGV[4], 's', ARGV[5], 'ix', ARGV[9], 'sc', score)
  for _, name in ipairs(cmsgpack.unpack(ARGV[9])) do
    redis.call('ZADD', p .. 'ix:' .. name, score, uid)
  end
  if ARGV[6] ~= '' then redis.call('HSET', key, 'tx', ARGV[6]) else redis.call('HDEL', key, 'tx') end
  if ARGV[7] ~= '' then redis.call('HSET', key, 'pa', ARGV[7]) else redis.call('HDEL', key, 'pa') end
  if ARGV[10] ~= '' then
    redis.call('HSET', key, 'ft', ARGV[10])
    redis.call('ZADD', p .. 'final', ARGV[10], uid)
  end
end
redis.call('HSET', key, 'v', version)

for i, ev in ipairs(events) do
  for _, ae in ipairs(recipients[i]) do
    redis.call('XADD', p .. 'q:' .. ae, 'MAXLEN', '~', ARGV[14], '*',
               't', ev[1], 'u', uid, 'i', ev[2], 'ts', ARGV[15])
    redis.call('SADD', p .. 'queues', ae)
    redis.call('PUBLISH', p .. 'notify', ae)
  end
end
return {1, version}
