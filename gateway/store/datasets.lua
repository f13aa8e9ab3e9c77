-- The stored datasets of several workitems in one command (a pipeline of HGETs costs the client
-- far more per workitem). KEYS: workitem keys. Returns one dataset or false per key.
local out = {}
for i, key in ipairs(KEYS) do
  out[i] = redis.call('HGET', key, 'd')
end
return out
