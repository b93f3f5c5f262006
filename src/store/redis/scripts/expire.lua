-- KEYS: 1 the workflow's open reservations, 2 the workflow's leased slices (by expiry)
-- ARGV: 1 now ms, 2 the workflow's key prefix, 3 the most to release
-- A slice its sidecar stopped renewing is released once it expires.
local slices = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, member in ipairs(slices) do
  local l = ARGV[2] .. 'l:' .. member
  local v = redis.call('HMGET', l, 'held', 'scope')
  if v[1] and v[1] ~= '0' and v[2] then
    redis.call('HINCRBY', v[2], 'reserved', '-' .. v[1])
    redis.call('HINCRBY', v[2], 'leased', '-' .. v[1])
  end
  redis.call('DEL', l)
  redis.call('ZREM', KEYS[2], member)
end
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
local n = 0
for _, id in ipairs(ids) do
  local r = ARGV[2] .. 'r:' .. id
  local v = redis.call('HMGET', r, 'state', 'amount', 'scopes')
  if v[1] == 'reserved' then
    if v[2] ~= '0' then
      for scope in string.gmatch(v[3], '[^\031]+') do
        redis.call('HINCRBY', ARGV[2] .. 's:' .. scope, 'reserved', '-' .. v[2])
      end
    end
    redis.call('HSET', r, 'state', 'expired')
    n = n + 1
  end
  redis.call('ZREM', KEYS[1], id)
end
return n
