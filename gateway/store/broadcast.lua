-- Queue one event for several AEs (SCP Status Change, backlog-overflow notices).
-- ARGV 1 prefix, 2 backlog, 3 now, 4 event type, 5 UID, 6 info blob, 7.. AEs
local event = new_event(ARGV[4], ARGV[5], ARGV[6], ARGV[3])
for i = 7, #ARGV do
  enqueue(ARGV[1], ARGV[i], ARGV[2], event)
end
notify(ARGV[1])
return #ARGV - 6
