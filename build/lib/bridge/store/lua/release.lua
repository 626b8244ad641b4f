-- Give a claimed job back (due now, in whichever schedule holds it) if the token is current.
-- KEYS: 1 due zset, 2 deliver zset, 3 fence hash   ARGV: 1 id, 2 token
if redis.call('HGET', KEYS[3], ARGV[1]) ~= ARGV[2] then return 0 end
local now = now_ms()
redis.call('ZADD', KEYS[1], 'XX', now, ARGV[1])
redis.call('ZADD', KEYS[2], 'XX', now, ARGV[1])
redis.call('HINCRBY', KEYS[3], ARGV[1], 1)
return 1
