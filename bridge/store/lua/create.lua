-- Create a job, claimed by its creator for one lease (fencing token returned).
-- KEYS: 1 job hash, 2 due zset, 3 fence hash, 4 idempotency key
-- ARGV: 1 job id, 2 lease_ms, 3 idempotency value ('' = none), 4 idem ttl_ms,
--       5.. field/value pairs
-- Run again (its reply was lost), it finds the job it created (ids are random) and
-- answers as the first run did.
local now = now_ms()
local created_at = redis.call('HGET', KEYS[1], 'created_at')
if created_at then
  return {1, redis.call('HGET', KEYS[3], ARGV[1]) or '', tonumber(created_at)}
end
if ARGV[3] ~= '' then
  local prev = redis.call('GET', KEYS[4])
  if prev then return {0, prev, now} end
end
redis.call('HSET', KEYS[1], 'created_at', now, 'updated_at', now, unpack(ARGV, 5))
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), ARGV[1])
local fence = redis.call('HINCRBY', KEYS[3], ARGV[1], 1)
if ARGV[3] ~= '' then
  redis.call('SET', KEYS[4], ARGV[3], 'PX', ARGV[4])
end
return {1, fence, now}
