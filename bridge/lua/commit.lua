-- Apply a worker's decision about a claimed job, only if its fencing token is current.
-- Returns the store's time (ms) it was applied at, 0 if fenced out, -1 if the job is gone.
-- Run again with the same commit id (its reply was lost), it applies nothing and
-- answers the time of the first run, even if that run ended the fencing.
-- KEYS: 1 job hash, 2 fence hash, 3 source zset, 4 target zset, 5 result key, 6 attempts list,
--       7 failed-deliveries zset, 8 duration histogram hash
-- ARGV: 1 id, 2 token, 3 commit id (unique per commit, the same when retried),
--       4 source action: 'keep' | 'rm' | delay_ms (re-schedule in source)
--       5 target delay_ms ('' = none)
--       6 '1' to set completed_at
--       7 result value ('' = none)
--       8 attempt record ('' = none)
--       9 expire_ms for job, result and attempts ('' = none; also ends fencing)
--       10 hash field that receives the next due time ('' = none)
--       11 '1' to index the job as a failed delivery
--       12 histogram field to count (an upstream's duration bucket; '' = none)
--       13.. field/value pairs
local id = ARGV[1]
local last = redis.call('HMGET', KEYS[1], 'commit_id', 'updated_at')
if last[1] == ARGV[3] then return tonumber(last[2]) end
if redis.call('HGET', KEYS[2], id) ~= ARGV[2] then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('ZREM', KEYS[3], id)
  redis.call('HDEL', KEYS[2], id)
  return -1
end
redis.call('HSET', KEYS[1], 'updated_at', now, 'commit_id', ARGV[3], unpack(ARGV, 13))
if ARGV[6] == '1' then redis.call('HSET', KEYS[1], 'completed_at', now) end
local src = ARGV[4]
local due = nil
if src == 'rm' then
  redis.call('ZREM', KEYS[3], id)
elseif src ~= 'keep' then
  due = now + tonumber(src)
  redis.call('ZADD', KEYS[3], due, id)
end
if ARGV[5] ~= '' then
  due = now + tonumber(ARGV[5])
  redis.call('ZADD', KEYS[4], due, id)
end
if ARGV[10] ~= '' and due then redis.call('HSET', KEYS[1], ARGV[10], due) end
if ARGV[7] ~= '' then redis.call('SET', KEYS[5], ARGV[7]) end
if ARGV[11] == '1' then redis.call('ZADD', KEYS[7], now, id) end
if ARGV[12] ~= '' then redis.call('HINCRBY', KEYS[8], ARGV[12], 1) end
if ARGV[8] ~= '' then
  redis.call('RPUSH', KEYS[6], ARGV[8])
  redis.call('LTRIM', KEYS[6], -100, -1)
end
if ARGV[9] ~= '' then
  for i = 1, 6 do
    if i ~= 2 and i ~= 3 and i ~= 4 then redis.call('PEXPIRE', KEYS[i], ARGV[9]) end
  end
  redis.call('HDEL', KEYS[2], id)
end
return now
