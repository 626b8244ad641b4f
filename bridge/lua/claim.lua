-- Claim up to N due members: re-score each to now + lease and hand out a fencing token.
-- KEYS: 1 schedule zset, 2 fence hash
-- ARGV: 1 lease_ms, 2 limit, 3 partition key prefix ("<prefix>:{pN}:"), 4 '1' to add results
-- Returns {now_ms, next_due_ms or -1, {id, token, due, job fields (flat), result or false, ...}}
-- The job and result keys read here share KEYS[1]'s hash tag, so they live in its slot.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
local limit = tonumber(ARGV[2])
if limit > 0 then
  local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'WITHSCORES', 'LIMIT', 0, limit)
  local until_ms = now + tonumber(ARGV[1])
  for i = 1, #due, 2 do
    local id = due[i]
    redis.call('ZADD', KEYS[1], until_ms, id)
    out[#out + 1] = id
    out[#out + 1] = redis.call('HINCRBY', KEYS[2], id, 1)
    out[#out + 1] = due[i + 1]
    out[#out + 1] = redis.call('HGETALL', ARGV[3] .. 'job:' .. id)
    if ARGV[4] == '1' then
      out[#out + 1] = redis.call('GET', ARGV[3] .. 'result:' .. id)
    else
      out[#out + 1] = false
    end
  end
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {now, tonumber(nxt[2] or '-1'), out}
