-- Remove from one partition's job lists (_lists.lua) the members whose job has expired.
-- A job record expires retention_ms after it finished, so only members created before
-- now - retention_ms can be gone; those are examined oldest first, at most `budget` per
-- call. A cursor per list remembers where the last call stopped, so that old jobs still
-- kept (deliveries being retried, redelivered jobs) are stepped over instead of examined
-- again and again; it starts over once it reaches the young end. Every list of finished
-- jobs gets a share of each call's budget.
-- KEYS: 1 tenants set of the partition, 2 sweep cursors hash   ARGV: 1 retention_ms, 2 budget
-- Returns {members examined, members removed}
local now = now_ms()
local tag = string.match(KEYS[1], '^(.*):tenants$')
local below = '(' .. string.format('%013d', now - tonumber(ARGV[1]))
local budget = tonumber(ARGV[2])
local tenants = redis.call('SMEMBERS', KEYS[1])
local examined, removed = 0, 0
-- sweep up to n members of one list on from its cursor; true if it reached the young end
local function sweep(tenant, status, n)
  local key, field = list_key(tag, tenant, 's', status), tenant .. ':' .. status
  local cursor = redis.call('HGET', KEYS[2], field)
  local old = redis.call('ZRANGEBYLEX', key, cursor and '(' .. cursor or '-', below, 'LIMIT', 0, n)
  for _, member in ipairs(old) do
    if redis.call('EXISTS', tag .. ':job:' .. string.sub(member, 15)) == 0 then
      unlist(tag, tenant, member)
      removed = removed + 1
    end
  end
  examined = examined + #old
  if #old < n then
    redis.call('HDEL', KEYS[2], field)
    return true
  end
  redis.call('HSET', KEYS[2], field, old[#old])
  return false
end
-- the lists of finished jobs (only those expire), each given an equal share of the budget
-- first, then what is left; the first list turns with each call
local lists = {}
for _, tenant in ipairs(tenants) do
  for _, status in ipairs({'completed', 'failed', 'cancelled'}) do
    lists[#lists + 1] = {tenant, status}
  end
end
local turn = redis.call('HINCRBY', KEYS[2], '#turn', 1)
local share = math.max(1, math.floor(budget / math.max(1, #lists)))
local unfinished = {}
for k = 1, #lists do
  local l = lists[(turn + k) % #lists + 1]
  if examined < budget and not sweep(l[1], l[2], math.min(share, budget - examined)) then
    unfinished[#unfinished + 1] = l
  end
end
for _, l in ipairs(unfinished) do
  if examined < budget then sweep(l[1], l[2], budget - examined) end
end
-- a tenant without any job left in the partition is forgotten here
for _, tenant in ipairs(tenants) do
  local keys = {}
  for _, s in ipairs(LIST_STATUSES) do keys[#keys + 1] = list_key(tag, tenant, 's', s) end
  for _, s in ipairs(LIST_STATES) do keys[#keys + 1] = list_key(tag, tenant, 'd', s) end
  if redis.call('EXISTS', unpack(keys)) == 0 then redis.call('SREM', KEYS[1], tenant) end
end
return {examined, removed}
