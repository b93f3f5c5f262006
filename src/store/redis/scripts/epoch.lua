-- Whether Redis lost state it had acknowledged (budget::redis::acks): a
-- workflow's epoch record counts the settlements charged for each sidecar;
-- a sidecar that was acknowledged more than Redis holds marks the workflow's
-- state lost, for every sidecar, until `switchyard budget reconcile`.
local function state_lost(epoch, holder, expected)
  if holder == '' then return nil end
  local v = redis.call('HMGET', epoch, 'lost', 'a:' .. holder)
  if v[1] then return v[1] end
  if tonumber(v[2] or '0') < tonumber(expected) then
    redis.call('HSET', epoch, 'lost', holder)
    return holder
  end
  return nil
end
