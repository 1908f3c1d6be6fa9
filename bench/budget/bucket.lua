-- The seed's design: a Redis token bucket per tenant (RPM, ITPM, OTPM), refilled continuously,
-- plus a dollar counter that is only READ here. The dollars are charged after the provider call
-- (check-then-charge), by INCRBYFLOAT on KEYS[2].
-- ARGV: rpm, itpm, otpm, est_input, max_output, est_usd, dollar_limit
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + tonumber(clock[2]) / 1000
local caps = {tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])}
local need = {1, tonumber(ARGV[4]), tonumber(ARGV[5])}
local state = redis.call('HMGET', KEYS[1], 'r', 'i', 'o', 't')
local last = tonumber(state[4]) or now
local levels = {}
for k = 1, 3 do
  local level = tonumber(state[k]) or caps[k]
  level = math.min(caps[k], level + (now - last) * caps[k] / 60000)
  if level < need[k] then return {0, k} end
  levels[k] = level - need[k]
end
local spent = tonumber(redis.call('GET', KEYS[2]) or '0')
if spent + tonumber(ARGV[6]) > tonumber(ARGV[7]) then return {0, 4} end
redis.call('HSET', KEYS[1], 'r', levels[1], 'i', levels[2], 'o', levels[3], 't', now)
return {1, 0}
