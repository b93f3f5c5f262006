-- KEYS: 1 the scope's newest escalation id, 2 the new escalation, 3 the workflow's escalations by time
-- ARGV: 1 the workflow's key prefix, 2 the new id, 3 created ms, 4.. the new escalation's fields
local cur = redis.call('GET', KEYS[1])
if cur then
  local st = redis.call('HGET', ARGV[1] .. 'e:' .. cur, 'state')
  if st == 'pending' or st == 'denied' then
    return {'open', cur}
  end
end
redis.call('HSET', KEYS[2], unpack(ARGV, 4))
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[2])
redis.call('SET', KEYS[1], ARGV[2])
return {'created', ARGV[2]}
