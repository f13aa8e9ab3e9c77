-- Advance delivery cursors of one or more AEs on one transport, each only for the current owner
-- of that AE's delivery. One MGET and one MSET whatever the number of AEs: a script's cost is
-- mostly its redis.call()s.
-- ARGV 1 prefix, 2 transport (ws|dimse), 3 msgpack array of {AE, owner id, cursor value ("id n")}
-- Returns per AE 1 (advanced) or 0 (the lease belongs to someone else).
local p, transport = ARGV[1], ARGV[2]
local advances = cmsgpack.unpack(ARGV[3])
local leases = {}
for i, advance in ipairs(advances) do leases[i] = k_lease(p, transport, advance[1]) end
local owners = redis.call('MGET', unpack(leases))
local set, out = {}, {}
for i, advance in ipairs(advances) do
  if owners[i] == advance[2] then
    set[#set + 1] = k_cursor(p, transport, advance[1])
    set[#set + 1] = advance[3]
    out[i] = 1
  else
    out[i] = 0
  end
end
if #set > 0 then redis.call('MSET', unpack(set)) end
return out
