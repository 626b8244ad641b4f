-- Backlog of one partition, for the gauges.
-- KEYS: 1 due zset, 2 deliver zset, 3 failed-deliveries zset   ARGV: 1 retention_ms
-- Returns {due now, deliveries due now, deliveries scheduled, failed deliveries retained}
local now = now_ms()
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - tonumber(ARGV[1]))
return {
  redis.call('ZCOUNT', KEYS[1], '-inf', now),
  redis.call('ZCOUNT', KEYS[2], '-inf', now),
  redis.call('ZCARD', KEYS[2]),
  redis.call('ZCARD', KEYS[3]),
}
