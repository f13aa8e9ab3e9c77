-- Shared by every script (prepended when loaded): queue one event for one subscriber AE.
-- Each AE's queue is a bounded stream; 'n' numbers its events so a reader can tell when the
-- bound dropped some it never saw.
local function enqueue(p, ae, backlog, now, event_type, uid, info)
  local n = redis.call('INCR', p .. 'qseq:' .. ae)
  redis.call('XADD', p .. 'q:' .. ae, 'MAXLEN', backlog, '*',
             'n', n, 't', event_type, 'u', uid, 'i', info, 'ts', now)
  redis.call('SADD', p .. 'queues', ae)
  redis.call('PUBLISH', p .. 'notify', ae)
end

