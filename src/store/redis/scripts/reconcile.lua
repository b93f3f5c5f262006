-- `switchyard budget reconcile`, for one workflow: each scope's spend
-- becomes at least what the sidecars' journals add up to, each sidecar's
-- acknowledged count at least its journal's, and the state is sound again.
-- KEYS: 1 the workflow's epoch record, 2.. the scopes
-- ARGV: 1 '1' to apply ('0': a dry run), 2.. each scope's journal sum (as KEYS),
--       then pairs of (sidecar, count)
local out = {}
local apply = ARGV[1] == '1'
for i = 2, #KEYS do
  local cur = redis.call('HGET', KEYS[i], 'spent') or '0'
  local want = ARGV[i]
  local after = cur
  if above(nanos(want), nanos(cur)) then
    after = want
    if apply then
      redis.call('HSET', KEYS[i], 'spent', want)
    end
  end
  table.insert(out, cur)
  table.insert(out, after)
end
for j = #KEYS + 1, #ARGV, 2 do
  local field = 'a:' .. ARGV[j]
  local cur = tonumber(redis.call('HGET', KEYS[1], field) or '0')
  if apply and cur < tonumber(ARGV[j + 1]) then
    redis.call('HSET', KEYS[1], field, ARGV[j + 1])
  end
end
local lost = redis.call('HGET', KEYS[1], 'lost') or ''
if apply then
  redis.call('HDEL', KEYS[1], 'lost')
  redis.call('HINCRBY', KEYS[1], 'epoch', 1)
end
table.insert(out, lost)
return out
