-- Shared by every script (prepended when loaded, after the key functions): queue events.
-- Each AE's queue is a bounded stream; 'n' numbers its events so a reader can tell when the
-- bound dropped some it never saw. What was queued is announced with a single PUBLISH at the end
-- of the script (notify): the events themselves, once each, and per AE which stream entry holds
-- which event, so that a deliverer can send them without reading the stream.
local published_events, published_entries, queued = {}, {}, {}

-- One event (its information already msgpack'd); returns its handle for enqueue.
local function new_event(event_type, uid, info, now)
  table.insert(published_events, {tonumber(event_type), uid, info, tonumber(now)})
  return #published_events
end

local function enqueue(p, ae, backlog, event)
  local e = published_events[event]
  local n = redis.call('INCR', k_queue_seq(p, ae))
  local id = redis.call('XADD', k_queue(p, ae), 'MAXLEN', backlog, '*',
                        'n', n, 't', e[1], 'u', e[2], 'i', e[3], 'ts', e[4])
  table.insert(published_entries, {ae, id, n, event})
  if not queued[ae] then
    queued[ae] = true
    redis.call('SADD', k_queues(p), ae)
  end
end

-- Returns the notification ('' when nothing was queued), so that the committing process can
-- hand it to its own deliverers at once instead of waiting for its echo.
local function notify(p)
  if #published_entries > 0 then
    local message = cmsgpack.pack({published_entries, published_events})
    redis.call('PUBLISH', k_notify(p), message)
    return message
  end
  return ''
end

-- Write an MPPS instance (``mpps``): its fields at version v, and how long it is kept.
local function save_mpps(key, v, blob, workitem, tx, note, ttl)
  redis.call('HSET', key, 'd', blob, 'v', v, 'n', note)
  if workitem ~= '' then redis.call('HSET', key, 'w', workitem) else redis.call('HDEL', key, 'w') end
  if tx ~= '' then redis.call('HSET', key, 'tx', tx) else redis.call('HDEL', key, 'tx') end
  if ttl ~= '' then redis.call('EXPIRE', key, tonumber(ttl)) end
end
