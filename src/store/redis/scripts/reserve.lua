-- KEYS: 1 the reservation, 2 the workflow's open reservations, 3.. the scopes,
--       last the workflow's epoch record
-- ARGV: 1 decision id, 2 amount, 3 expires ms, 4 retain ms, 5 scope names,
--       6 the decision's description (workflow, outcome, model, deferrable, created, expires),
--       7 the decision's snapshot for what-if estimates (may be empty),
--       8.. each scope's limit from the rules,
--       then the sidecar ('' to skip the check) and the settlements acknowledged to it
local last = #KEYS - 1
local lost = state_lost(KEYS[#KEYS], ARGV[#ARGV - 1], ARGV[#ARGV])
if lost then
  return {'lost', lost}
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {'dup'}
end
local amount = nanos(ARGV[2])
for i = 3, last do
  local v = redis.call('HMGET', KEYS[i], 'extra', 'spent', 'reserved', 'limit')
  local limit = plus(nanos(ARGV[i + 5]), nanos(v[1]))
  if above(plus(plus(nanos(v[2]), nanos(v[3])), amount), limit) then
    return {'over', tostring(i - 2), ARGV[i + 5], v[1] or '0', v[2] or '0', v[3] or '0'}
  end
  if v[4] ~= ARGV[i + 5] then
    redis.call('HSET', KEYS[i], 'limit', ARGV[i + 5])
  end
end
for i = 3, last do
  redis.call('HINCRBY', KEYS[i], 'reserved', ARGV[2])
end
redis.call('HSET', KEYS[1], 'state', 'reserved', 'amount', ARGV[2], 'scopes', ARGV[5], 'meta', ARGV[6])
if ARGV[7] ~= '' then
  redis.call('HSET', KEYS[1], 'snap', ARGV[7])
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
if last > 2 then
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
end
return {'ok'}
