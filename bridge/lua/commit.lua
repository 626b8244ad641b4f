-- Apply a worker's decision about a claimed job, only if its fencing token is current.
-- Returns the store's time (ms) it was applied at, 0 if fenced out, -1 if the job is gone.
-- KEYS: 1 job hash, 2 fence hash, 3 source zset, 4 target zset, 5 result key, 6 attempts list,
--       7 failed-deliveries zset, 8 duration histogram hash
-- ARGV: 1 id, 2 token,
--       3 source action: 'keep' | 'rm' | delay_ms (re-schedule in source)
--       4 target delay_ms ('' = none)
--       5 '1' to set completed_at
--       6 result value ('' = none)
--       7 attempt record ('' = none)
--       8 expire_ms for job, result and attempts ('' = none; also ends fencing)
--       9 hash field that receives the next due time ('' = none)
--       10 '1' to index the job as a failed delivery
--       11 histogram field to count (an upstream's duration bucket; '' = none)
--       12.. field/value pairs
local id = ARGV[1]
if redis.call('HGET', KEYS[2], id) ~= ARGV[2] then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('ZREM', KEYS[3], id)
  redis.call('HDEL', KEYS[2], id)
  return -1
end
redis.call('HSET', KEYS[1], 'updated_at', now, unpack(ARGV, 12))
if ARGV[5] == '1' then redis.call('HSET', KEYS[1], 'completed_at', now) end
local src = ARGV[3]
local due = nil
if src == 'rm' then
  redis.call('ZREM', KEYS[3], id)
elseif src ~= 'keep' then
  due = now + tonumber(src)
  redis.call('ZADD', KEYS[3], due, id)
end
if ARGV[4] ~= '' then
  due = now + tonumber(ARGV[4])
  redis.call('ZADD', KEYS[4], due, id)
end
if ARGV[9] ~= '' and due then redis.call('HSET', KEYS[1], ARGV[9], due) end
if ARGV[6] ~= '' then redis.call('SET', KEYS[5], ARGV[6]) end
if ARGV[10] == '1' then redis.call('ZADD', KEYS[7], now, id) end
if ARGV[11] ~= '' then redis.call('HINCRBY', KEYS[8], ARGV[11], 1) end
if ARGV[7] ~= '' then
  redis.call('RPUSH', KEYS[6], ARGV[7])
  redis.call('LTRIM', KEYS[6], -100, -1)
end
if ARGV[8] ~= '' then
  for i = 1, 6 do
    if i ~= 2 and i ~= 3 and i ~= 4 then redis.call('PEXPIRE', KEYS[i], ARGV[8]) end
  end
  redis.call('HDEL', KEYS[2], id)
end
return now
