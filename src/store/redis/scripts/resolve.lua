-- KEYS: 1 the escalation, 2 its scope
-- ARGV: 1 '1' to approve, 2 nano-USD to add, 3 by, 4 now ms, 5 reason,
--       6 the most approvals may add to one scope in all
local st = redis.call('HGET', KEYS[1], 'state')
if not st then
  return {'unknown'}
end
if st ~= 'pending' then
  return {'resolved', st}
end
local state, added = 'denied', '0'
if ARGV[1] == '1' then
  state, added = 'approved', ARGV[2]
  local extra = redis.call('HGET', KEYS[2], 'extra') or '0'
  if above(plus(nanos(extra), nanos(added)), nanos(ARGV[6])) then
    return {'cap', extra}
  end
  redis.call('HINCRBY', KEYS[2], 'extra', added)
end
redis.call('HSET', KEYS[1], 'state', state, 'resolved_by', ARGV[3], 'resolved_ms', ARGV[4], 'added', added,
  'reason', ARGV[5])
return {'ok'}
