-- Cancel a job that is not terminal yet; invalidates any in-flight claim; relists it.
-- KEYS: 1 job hash, 2 due zset, 3 fence hash, 4 result, 5 attempts
-- ARGV: 1 id, 2 tenant, 3 expire_ms, 4 publish command, 5 the partition's channel
-- Returns 'ok', 'missing' or the current (terminal) status.
local owner = redis.call('HGET', KEYS[1], 'tenant')
if not owner or owner ~= ARGV[2] then return 'missing' end
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'queued' and status ~= 'running' then return status end
local now = now_ms()
local before = redis.call('HMGET', KEYS[1], 'status', 'delivery_state', 'tenant', 'created_at')
redis.call('HSET', KEYS[1], 'status', 'cancelled', 'updated_at', now, 'completed_at', now,
  'delivery_state', 'none')
relist(partition_tag(KEYS[1]), ARGV[1], before, 'cancelled', 'none')
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[4], ARGV[3])
redis.call('PEXPIRE', KEYS[5], ARGV[3])
redis.call(ARGV[4], ARGV[5], 'done ' .. ARGV[1])
return 'ok'
