-- Shared by every script (prepended when loaded): queue one event for one subscriber AE.
-- Each AE's queue is a bounded stream; 'n' numbers its events so a reader can tell when the
-- bound dropped some it never saw. Subscribers to wake are collected and announced with a single
-- PUBLISH (newline-separated AE titles) by notify() at the end of the script.
local notified, notify_list = {}, {}

local function enqueue(p, ae, backlog, now, event_type, uid, info)
  local n = redis.call('INCR', p .. 'qseq:' .. ae)
  redis.call('XADD', p .. 'q:' .. ae, 'MAXLEN', backlog, '*',
             'n', n, 't', event_type, 'u', uid, 'i', info, 'ts', now)
  if not notified[ae] then
    notified[ae] = true
    table.insert(notify_list, ae)
    redis.call('SADD', p .. 'queues', ae)
  end
end

local function notify(p)
  if #notify_list > 0 then
    redis.call('PUBLISH', p .. 'notify', table.concat(notify_list, '\n'))
  end
end

