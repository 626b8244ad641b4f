-- Claim up to N due members: re-score each to now + lease and hand out a fencing token.
-- KEYS: 1 schedule zset, 2 fence hash, 3 this claimer's last claim (cjson, expires with the lease)
-- ARGV: 1 lease_ms, 2 limit, 3 partition key prefix ("<prefix>:{pN}:"), 4 '1' to add results,
--       5 claim id (unique per claim, the same when retried), 6 '1' to note the lease in
--       each claimed job's lease_until (the due schedule: poke.lua reads it)
-- Returns {now_ms, next_due_ms or -1, {id, token, due, job fields (flat), result or false, ...}}
-- Run again with the same claim id (its reply was lost), it hands out the claims of the
-- first run that are still current instead of leaving them hidden for a lease.
-- The job and result keys read here share KEYS[1]'s hash tag, so they live in its slot.
local now = now_ms()
local out = {}
local function hand_out(id, token, due)
  out[#out + 1] = id
  out[#out + 1] = token
  out[#out + 1] = due
  out[#out + 1] = redis.call('HGETALL', ARGV[3] .. 'job:' .. id)
  if ARGV[4] == '1' then
    out[#out + 1] = redis.call('GET', ARGV[3] .. 'result:' .. id)
  else
    out[#out + 1] = false
  end
end
local last = redis.call('GET', KEYS[3])
local first = last and cjson.decode(last)
if first and first[1] == ARGV[5] then
  for i = 2, #first, 3 do
    if redis.call('HGET', KEYS[2], first[i]) == first[i + 1] then
      hand_out(first[i], first[i + 1], first[i + 2])
    end
  end
else
  local limit = tonumber(ARGV[2])
  if limit > 0 then
    local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'WITHSCORES', 'LIMIT', 0, limit)
    local until_ms = now + tonumber(ARGV[1])
    local record = {ARGV[5]}
    for i = 1, #due, 2 do
      local id = due[i]
      redis.call('ZADD', KEYS[1], until_ms, id)
      local job = ARGV[3] .. 'job:' .. id
      if ARGV[6] == '1' and redis.call('EXISTS', job) == 1 then
        redis.call('HSET', job, 'lease_until', until_ms)
      end
      local token = tostring(redis.call('HINCRBY', KEYS[2], id, 1))
      hand_out(id, token, due[i + 1])
      record[#record + 1] = id
      record[#record + 1] = token
      record[#record + 1] = due[i + 1]
    end
    if #due > 0 then
      redis.call('SET', KEYS[3], cjson.encode(record), 'PX', math.max(1, tonumber(ARGV[1])))
    end
  end
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {now, tonumber(nxt[2] or '-1'), out}
