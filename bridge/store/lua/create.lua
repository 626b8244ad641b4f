-- Create a job, claimed by its creator for one lease (fencing token returned), and list it
-- (_lists.lua) under its tenant.
-- KEYS: 1 job hash, 2 due zset, 3 fence hash, 4 idempotency key
-- ARGV: 1 job id, 2 lease_ms, 3 idempotency value ('' = none), 4 idem ttl_ms, 5 tenant,
--       6 in-flight cap of this partition ('' = none: the tenant's max_jobs_in_flight less
--       its jobs in flight in the other partitions), 7.. field/value pairs
-- Returns {1, token, created_at}; {0, idempotency value, now} for a known key; or
-- {2, the tenant's jobs in flight here, now} when the cap is reached (nothing written).
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
local tag, tenant = partition_tag(KEYS[1]), ARGV[5]
if ARGV[6] ~= '' then
  local in_flight = tonumber(redis.call('HGET', tag .. ':inflight', tenant) or '0')
  if in_flight >= tonumber(ARGV[6]) then return {2, in_flight, now} end
end
redis.call('HSET', KEYS[1], 'created_at', now, 'updated_at', now, 'tenant', tenant,
  unpack(ARGV, 7))
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), ARGV[1])
local fence = redis.call('HINCRBY', KEYS[3], ARGV[1], 1)
if ARGV[3] ~= '' then
  redis.call('SET', KEYS[4], ARGV[3], 'PX', ARGV[4])
end
list_job(tag, tenant, list_member(now, ARGV[1]), pair_value(ARGV, 7, 'status') or 'queued',
  pair_value(ARGV, 7, 'delivery_state') or 'none')
return {1, fence, now}
