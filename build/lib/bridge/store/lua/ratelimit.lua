-- GCRA rate limit shared by every replica: reserve the next slot if it comes soon enough.
-- KEYS: 1 limiter key
-- ARGV: 1 interval_us (1e6 / rate), 2 max_wait_us
-- Returns {reserved (1/0), wait_us}: reserved slots must be used after wait_us.
local now = now_us()
local interval = tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local wait = tat - now
if wait > tonumber(ARGV[2]) then return {0, wait} end
local new_tat = tat + interval
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX',
  math.ceil((new_tat - now) / 1000) + 1000)
return {1, wait}
