-- Give a claimed member back (due now) if the token is still current.
-- KEYS: 1 schedule zset, 2 fence hash   ARGV: 1 id, 2 token
if redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[2] then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], 'XX', now, ARGV[1])
redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
return 1
