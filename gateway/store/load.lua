-- One workitem as a decision needs it, in one call (batched with other calls of the same loop
-- turn): dataset, version, state, Transaction UID, performer AE; for a missing workitem, whether
-- it was purged (its tombstone).
-- KEYS 1 the workitem hash, 2 its tombstone
-- Returns {dataset, version, state, tx | false, performer | false} | {false, tombstone exists}
local found = redis.call('HMGET', KEYS[1], 'd', 'v', 's', 'tx', 'pa')
if not found[1] then return {false, redis.call('EXISTS', KEYS[2])} end
return found
