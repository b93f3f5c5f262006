-- Exact nano-dollar arithmetic, prepended to the scripts that need it.
-- Exact nano-dollar arithmetic for the scripts. Amounts arrive as decimal
-- strings of up to 19 digits, and Lua's numbers are doubles, exact only
-- below 2^53 (about $9 million): each amount is split into billions and
-- units, both exact, then added and compared in parts. Redis's own HINCRBY
-- is exact and refuses to overflow; these decide, before any write, whether
-- a change fits, so a script never stops half way.
local function nanos(s)
  s = s or '0'
  if s == '' then s = '0' end
  local neg = string.sub(s, 1, 1) == '-'
  if neg then s = string.sub(s, 2) end
  local n = #s
  local hi, lo = 0, tonumber(s)
  if n > 9 then
    hi, lo = tonumber(string.sub(s, 1, n - 9)), tonumber(string.sub(s, n - 8))
  end
  if neg then hi, lo = -hi, -lo end
  local carry = math.floor(lo / 1e9)
  return {hi + carry, lo - carry * 1e9}
end
local function plus(a, b)
  local hi, lo = a[1] + b[1], a[2] + b[2]
  local carry = math.floor(lo / 1e9)
  return {hi + carry, lo - carry * 1e9}
end
local function above(a, b)
  if a[1] ~= b[1] then return a[1] > b[1] end
  return a[2] > b[2]
end
local I64_MAX = '9223372036854775807'
