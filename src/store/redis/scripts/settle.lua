-- KEYS: 1 the reservation, 2 the workflow's open reservations, 3 the workflow's ledger stream,
--       4 the workflow's decision log (snapshots for what-if), 5.. the scopes
-- ARGV: 1 decision id, 2 cost, 3 retain ms, 4 the usage (tokens, failed, when),
--       5 '1' when 6.. describe the decision (it may never have reached this store),
--       6 amount, 7 scope names, 8 the decision's description, 9 the ledger's approximate length cap,
--       10 the decision's snapshot (with 5), 11 the oldest decision-log entry to keep (ms),
--       12 the sidecar ('' to skip the check), 13 the settlements acknowledged to it
-- The last KEY is the workflow's epoch record.
local epoch = KEYS[#KEYS]
local lost = state_lost(epoch, ARGV[12], ARGV[13])
if lost then
  return {'lost', lost}
end
local v = redis.call('HMGET', KEYS[1], 'state', 'amount', 'actual', 'meta', 'snap')
local release = '0'
local meta = v[4]
local snap = v[5]
if not v[1] then
  if ARGV[5] ~= '1' then
    return {'unknown'}
  end
  meta = ARGV[8]
  snap = ARGV[10]
  redis.call('HSET', KEYS[1], 'amount', ARGV[6], 'scopes', ARGV[7], 'meta', meta)
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
elseif v[1] == 'settled' then
  return {'settled', v[3] or '0'}
elseif v[1] == 'reserved' then
  release = v[2]
  redis.call('ZREM', KEYS[2], ARGV[1])
end
local cost, top = nanos(ARGV[2]), nanos(I64_MAX)
for i = 5, #KEYS - 1 do
  if release ~= '0' then
    redis.call('HINCRBY', KEYS[i], 'reserved', '-' .. release)
  end
  -- Spend saturates at the top of i64 rather than fail half way.
  if above(plus(nanos(redis.call('HGET', KEYS[i], 'spent')), cost), top) then
    redis.call('HSET', KEYS[i], 'spent', I64_MAX)
  else
    redis.call('HINCRBY', KEYS[i], 'spent', ARGV[2])
  end
end
redis.call('HSET', KEYS[1], 'state', 'settled', 'actual', ARGV[2], 'usage', ARGV[4])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[9], '*', 'k', 'call', 'd', ARGV[1], 'meta', meta or '',
  'cost', ARGV[2], 'usage', ARGV[4])
-- The decision log keeps snapshots for the retention period: entries older
-- than ARGV[11] go as new ones arrive.
if snap and snap ~= '' then
  redis.call('XADD', KEYS[4], 'MINID', '~', ARGV[11], '*', 'd', ARGV[1], 'snap', snap)
end
if ARGV[12] ~= '' then
  redis.call('HINCRBY', epoch, 'a:' .. ARGV[12], 1)
end
return {'charged'}
