-- A sidecar renews its slice of a leased period budget (budget::lease):
-- charges what its calls spent, keeps held what it still needs, adds more
-- if enough remains. `budget::lease::renewal_arithmetic` is the same in Rust.
-- KEYS: 1 the period scope, 2 the holder's slice, 3 the workflow's slices (by expiry),
--       4 the workflow's ledger stream, 5 the workflow's decision log, 6 the workflow's epoch record
-- ARGV: 1 the slice's member name (holder, scope), 2 the scope's limit from the rules,
--       3 keep, 4 want, 5 max share (basis points), 6 expires ms, 7 retain ms,
--       8 the ledger's approximate length cap, 9 the oldest decision-log entry to keep (ms),
--       10 the workflow's key prefix, 11 settled count, 12 routed count,
--       13 the sidecar, 14 the settlements acknowledged to it,
--       then per routed call: id, amount, scope names, description, snapshot;
--       then per settled call: id, cost, usage, amount, scope names, description, snapshot
local scope, slice = KEYS[1], KEYS[2]
local lost = state_lost(KEYS[6], ARGV[13], ARGV[14])
if lost then
  return {'lost', lost}
end
local nsettled, nrouted = tonumber(ARGV[11]), tonumber(ARGV[12])
local at = 15
local charged_n, charged = 0, {0, 0}
for _ = 1, nrouted do
  local r = ARGV[10] .. 'r:' .. ARGV[at]
  if redis.call('EXISTS', r) == 0 then
    redis.call('HSET', r, 'state', 'leased', 'amount', ARGV[at + 1], 'scopes', ARGV[at + 2], 'meta', ARGV[at + 3])
    if ARGV[at + 4] ~= '' then
      redis.call('HSET', r, 'snap', ARGV[at + 4])
    end
    redis.call('PEXPIRE', r, ARGV[7])
  end
  at = at + 5
end
local top = nanos(I64_MAX)
for _ = 1, nsettled do
  local id = ARGV[at]
  local r = ARGV[10] .. 'r:' .. id
  local v = redis.call('HMGET', r, 'state', 'snap')
  if v[1] ~= 'settled' then
    local snap = v[2] or ARGV[at + 6]
    redis.call('HSET', r, 'state', 'settled', 'actual', ARGV[at + 1], 'usage', ARGV[at + 2],
      'amount', ARGV[at + 3], 'scopes', ARGV[at + 4], 'meta', ARGV[at + 5])
    redis.call('PEXPIRE', r, ARGV[7])
    if above(plus(nanos(redis.call('HGET', scope, 'spent')), nanos(ARGV[at + 1])), top) then
      redis.call('HSET', scope, 'spent', I64_MAX)
    else
      redis.call('HINCRBY', scope, 'spent', ARGV[at + 1])
    end
    redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[8], '*', 'k', 'call', 'd', id, 'meta', ARGV[at + 5],
      'cost', ARGV[at + 1], 'usage', ARGV[at + 2])
    if snap ~= '' then
      redis.call('XADD', KEYS[5], 'MINID', '~', ARGV[9], '*', 'd', id, 'snap', snap)
    end
    charged_n = charged_n + 1
    charged = plus(charged, nanos(ARGV[at + 1]))
  end
  at = at + 7
end
if charged_n > 0 then
  redis.call('HINCRBY', KEYS[6], 'a:' .. ARGV[13], charged_n)
end
-- The hold becomes `keep`, whatever it was: a repeated renewal changes nothing more.
local before = redis.call('HGET', slice, 'held') or '0'
if before ~= '0' then
  redis.call('HINCRBY', scope, 'reserved', '-' .. before)
  redis.call('HINCRBY', scope, 'leased', '-' .. before)
end
if ARGV[3] ~= '0' then
  redis.call('HINCRBY', scope, 'reserved', ARGV[3])
  redis.call('HINCRBY', scope, 'leased', ARGV[3])
end
local s = redis.call('HMGET', scope, 'extra', 'spent', 'reserved', 'leased', 'limit')
if s[5] ~= ARGV[2] then
  redis.call('HSET', scope, 'limit', ARGV[2])
end
local limit = plus(nanos(ARGV[2]), nanos(s[1]))
local used = plus(nanos(s[2]), nanos(s[3]))
-- free = limit - used, in parts
local free = plus(limit, {-used[1], -used[2]})
local leased = nanos(s[4])
local stopped = above(leased, free)
local fresh = 0
if not stopped then
  local f = free[1] * 1e9 + free[2]
  local cap = math.floor(f * tonumber(ARGV[5]) / 10000)
  -- Doubles are exact below 2^53 nano-dollars; above, stay on the safe side.
  if f > 9007199254740992 then cap = cap - 4096 end
  fresh = math.max(0, math.min(tonumber(ARGV[4]), cap))
end
local fresh_s = string.format('%.0f', fresh)
if fresh > 0 then
  redis.call('HINCRBY', scope, 'reserved', fresh_s)
  redis.call('HINCRBY', scope, 'leased', fresh_s)
end
redis.call('HSET', slice, 'held', ARGV[3], 'scope', scope, 'expires', ARGV[6])
local held = redis.call('HINCRBY', slice, 'held', fresh_s)
if held == 0 then
  redis.call('DEL', slice)
  redis.call('ZREM', KEYS[3], ARGV[1])
else
  redis.call('ZADD', KEYS[3], ARGV[6], ARGV[1])
end
local after = redis.call('HMGET', scope, 'spent', 'reserved')
return {'ok', fresh_s, stopped and '1' or '0', ARGV[2], s[1] or '0', after[1] or '0', after[2] or '0',
  tostring(charged_n), string.format('%.0f', charged[1] * 1e9 + charged[2])}
