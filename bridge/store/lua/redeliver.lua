-- Schedule one more delivery of a terminal job's event (same webhook-id); relists it.
-- KEYS: 1 job hash, 2 deliver zset, 3 fence hash, 4 result, 5 attempts, 6 failed zset
-- ARGV: 1 id, 2 tenant
-- Returns 'ok', 'missing' or the current (non-deliverable) status.
local owner = redis.call('HGET', KEYS[1], 'tenant')
if not owner or owner ~= ARGV[2] then return 'missing' end
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'completed' and status ~= 'failed' then return status end
local now = now_ms()
local attempts = tonumber(redis.call('HGET', KEYS[1], 'delivery_attempts') or '0')
local state = redis.call('HGET', KEYS[1], 'delivery_state')
local budget = attempts + 1
if state == 'pending' or state == 'scheduled' or state == 'delivering' then
  budget = math.max(budget, tonumber(redis.call('HGET', KEYS[1], 'max_attempts') or '0'))
end
local before = redis.call('HMGET', KEYS[1], 'status', 'delivery_state', 'tenant', 'created_at')
redis.call('HSET', KEYS[1], 'delivery_state', 'pending', 'max_attempts', budget,
  'next_attempt_at', now, 'updated_at', now)
relist(partition_tag(KEYS[1]), ARGV[1], before, nil, 'pending')
redis.call('PERSIST', KEYS[1])
redis.call('PERSIST', KEYS[4])
redis.call('PERSIST', KEYS[5])
redis.call('ZADD', KEYS[2], now, ARGV[1])
redis.call('ZREM', KEYS[6], ARGV[1])
redis.call('HINCRBY', KEYS[3], ARGV[1], 1)
return 'ok'
