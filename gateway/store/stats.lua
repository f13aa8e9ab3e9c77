-- The worklist's figures for /metrics, read in one step (cheap: no workitem is read).
-- Workitems by state and Worklist Label are the cardinalities of the st:{state}:wl:{label}
-- indexes that every commit and purge keeps exact; a label no stored workitem has any more is
-- forgotten here (atomically, so a commit that gives it back re-adds it).
--
-- ARGV 1 prefix, 2 the states (msgpack array)
-- Returns {{label, count per state…}…}, {transition, count, …}
local p = ARGV[1]
local states = cmsgpack.unpack(ARGV[2])
local workitems = {}
for _, label in ipairs(redis.call('SMEMBERS', k_labels(p))) do
  if redis.call('ZCARD', k_index(p, 'wl:' .. label)) == 0 then
    redis.call('SREM', k_labels(p), label)
  else
    local row = {label}
    for _, state in ipairs(states) do
      table.insert(row, redis.call('ZCARD', k_index(p, 'st:' .. state .. ':wl:' .. label)))
    end
    table.insert(workitems, row)
  end
end
return {workitems, redis.call('HGETALL', k_transitions(p))}
