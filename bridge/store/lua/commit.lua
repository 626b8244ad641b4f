-- Apply a worker's decision about a claimed job, only if its fencing token is current.
-- A change of status or delivery state moves the job between its tenant's lists (_lists.lua).
-- Returns the store's time (ms) it was applied at, 0 if fenced out, -1 if the job is gone.
-- Run again with the same commit id (its reply was lost), it applies nothing and
-- answers the time of the first run, even if that run ended the fencing.
-- KEYS: 1 job hash, 2 fence hash, 3 source zset, 4 target zset, 5 result key, 6 attempts list,
--       7 failed-deliveries zset, 8 counters hash of the partition
-- ARGV: 1 options (cjson; an absent option does nothing):
--         id, token, commit (id, unique per commit, the same when retried),
--         remove (true: leave the source schedule) or after_ms (due again in it after that),
--         target_ms (due in the target schedule after that), due_field (hash field that
--         receives the next due time), completed (true: set completed_at), result,
--         attempt (a delivery attempt record), failed_delivery (true: index the job as a
--         failed delivery), counters ({field: n} added to KEYS[8]), expire_ms (the job,
--         result and attempts expire after that; ends fencing), held (with after_ms: the
--         committer keeps the lease until then; poke.lua leaves the job to it),
--         publish ({command, channel, message}: a notice, store/notify.py)
--       2.. job field/value pairs
local o = cjson.decode(ARGV[1])
local id = o.id
local last = redis.call('HMGET', KEYS[1], 'commit_id', 'updated_at')
if last[1] == o.commit then return tonumber(last[2]) end
if redis.call('HGET', KEYS[2], id) ~= o.token then return 0 end
local now = now_ms()
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('ZREM', KEYS[3], id)
  redis.call('HDEL', KEYS[2], id)
  return -1
end
local new_status, new_state = pair_value(ARGV, 2, 'status'), pair_value(ARGV, 2, 'delivery_state')
local before = (new_status or new_state)
  and redis.call('HMGET', KEYS[1], 'status', 'delivery_state', 'tenant', 'created_at')
redis.call('HSET', KEYS[1], 'updated_at', now, 'commit_id', o.commit, unpack(ARGV, 2))
if before then relist(partition_tag(KEYS[1]), id, before, new_status, new_state) end
if o.completed then redis.call('HSET', KEYS[1], 'completed_at', now) end
local due = nil
if o.remove then
  redis.call('ZREM', KEYS[3], id)
elseif o.after_ms then
  due = now + o.after_ms
  redis.call('ZADD', KEYS[3], due, id)
end
if o.remove or o.after_ms then redis.call('HSET', KEYS[1], 'lease_until', o.held and due or 0) end
if o.target_ms then
  due = now + o.target_ms
  redis.call('ZADD', KEYS[4], due, id)
end
if o.due_field and due then redis.call('HSET', KEYS[1], o.due_field, due) end
if o.result then redis.call('SET', KEYS[5], o.result) end
if o.failed_delivery then redis.call('ZADD', KEYS[7], now, id) end
for field, n in pairs(o.counters or {}) do redis.call('HINCRBY', KEYS[8], field, n) end
if o.attempt then
  redis.call('RPUSH', KEYS[6], o.attempt)
  redis.call('LTRIM', KEYS[6], -100, -1)
end
if o.expire_ms then
  redis.call('PEXPIRE', KEYS[1], o.expire_ms)
  redis.call('PEXPIRE', KEYS[5], o.expire_ms)
  redis.call('PEXPIRE', KEYS[6], o.expire_ms)
  redis.call('HDEL', KEYS[2], id)
end
if o.publish then redis.call(o.publish[1], o.publish[2], o.publish[3]) end
return now
