-- Atomically commit one workitem change: compare-and-set on its version, rewrite its secondary
-- indexes, apply auto-subscriptions and queue its events for every subscriber, all in one step.
--
-- KEYS[1]  workitem hash
-- ARGV     1 prefix, 2 uid, 3 expected version (0 = create), 4 dataset blob ('' = unchanged),
--          5 state, 6 transaction uid ('' = none), 7 performer AE ('' = none), 8 score,
--          9 index names (msgpack array), 10 final-state time ('' = not final),
--          11 expected global-subscription version ('' = unchecked),
--          12 subscriptions to add (msgpack array of {ae, lock}),
--          13 events (msgpack array of {type, info blob, extra recipients, required, only}),
--          14 per-subscriber backlog, 15 now (ms), 16 State Report blob of the new content,
--          17 MPPS instance UID to write in the same step ('' = none), 18 its expected version,
--          19 its dataset blob, 20 its linked workitem, 21 its Transaction UID, 22 its note,
--          23 its TTL in seconds ('' = none)
-- An event goes to the workitem's subscribers plus its extra recipients, or only to 'only' when
-- that list is not empty; 'required' refuses the commit when nobody would receive it.
-- Returns  {1, new version} | {0, current version} conflict | {2} purged UID | {3} no recipient
-- (an MPPS instance no longer at its version is a conflict too)
local p, uid, key = ARGV[1], ARGV[2], KEYS[1]
local current = tonumber(redis.call('HGET', key, 'v') or '0')
if current ~= tonumber(ARGV[3]) then return {0, current} end
if ARGV[17] ~= '' and tonumber(redis.call('HGET', k_mpps(p, ARGV[17]), 'v') or '0')
    ~= tonumber(ARGV[18]) then
  return {0, current}
end
if current == 0 and redis.call('EXISTS', k_tombstone(p, uid)) == 1 then return {2} end
if ARGV[11] ~= '' and (redis.call('GET', k_globals_version(p)) or '0') ~= ARGV[11] then
  return {0, current}
end

local subs_key = k_subscribers_of(p, uid)
for _, sub in ipairs(cmsgpack.unpack(ARGV[12])) do
  redis.call('HSET', subs_key, sub[1], sub[2])
  redis.call('SADD', k_subscriptions_of(p, sub[1]), uid)
  redis.call('SADD', k_subscribers(p), sub[1])
end

local events = cmsgpack.unpack(ARGV[13])
local recipients = {}
for i, ev in ipairs(events) do
  local seen, list = {}, {}
  local candidates = ev[5]
  if #candidates == 0 then candidates = redis.call('HKEYS', subs_key) end
  for _, ae in ipairs(candidates) do seen[ae] = true; table.insert(list, ae) end
  if #ev[5] == 0 then
    for _, ae in ipairs(ev[3]) do
      if not seen[ae] then seen[ae] = true; table.insert(list, ae) end
    end
  end
  if ev[4] and #list == 0 then return {3} end
  recipients[i] = list
end

local version = current + 1
if ARGV[4] ~= '' then
  -- Secondary indexes: leave the ones the workitem stays in (same score), move the others.
  local stored = redis.call('HMGET', key, 'ix', 'sc')
  local score = ARGV[8]
  local kept = {}
  if stored[1] then
    local same_score = stored[2] and tonumber(stored[2]) == tonumber(score)
    local wanted = {}
    for _, name in ipairs(cmsgpack.unpack(ARGV[9])) do wanted[name] = true end
    for _, name in ipairs(cmsgpack.unpack(stored[1])) do
      if same_score and wanted[name] then
        kept[name] = true
      else
        redis.call('ZREM', k_index(p, name), uid)
      end
    end
  end
  redis.call('HSET', key, 'd', ARGV[4], 's', ARGV[5], 'ix', ARGV[9], 'sc', score, 'sr', ARGV[16])
  for _, name in ipairs(cmsgpack.unpack(ARGV[9])) do
    if not kept[name] then redis.call('ZADD', k_index(p, name), score, uid) end
  end
  if ARGV[6] ~= '' then redis.call('HSET', key, 'tx', ARGV[6]) else redis.call('HDEL', key, 'tx') end
  if ARGV[7] ~= '' then redis.call('HSET', key, 'pa', ARGV[7]) else redis.call('HDEL', key, 'pa') end
  if ARGV[10] ~= '' then
    redis.call('HSET', key, 'ft', ARGV[10])
    redis.call('ZADD', k_final(p), ARGV[10], uid)
  end
end
redis.call('HSET', key, 'v', version)
if ARGV[17] ~= '' then
  save_mpps(k_mpps(p, ARGV[17]), tonumber(ARGV[18]) + 1, ARGV[19], ARGV[20], ARGV[21], ARGV[22],
            ARGV[23])
end

for i, ev in ipairs(events) do
  local event = new_event(ev[1], uid, ev[2], ARGV[15])
  for _, ae in ipairs(recipients[i]) do
    enqueue(p, ae, ARGV[14], event)
  end
end
return {1, version, notify(p)}
