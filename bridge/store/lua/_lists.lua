-- Included by the scripts that create a job or change its status or delivery state, and by
-- those that read or sweep the job lists (bridge/store/lists.py).
--
-- A tenant's jobs in a partition are listed in one sorted set per status and one per
-- delivery state: <tag>:list:<tenant>:s:<status> and <tag>:list:<tenant>:d:<state>. Every
-- member has score 0 and is '<created_at, 13 digits>:<job id>', so the sets are ordered by
-- creation, then id (ZREVRANGEBYLEX reads them newest first from any member on), and a
-- member never changes: a job moves between sets, never within one. A job is in exactly
-- one status set of its tenant while its record exists, and in one delivery set unless
-- its delivery state is 'none' (no set: most jobs in flight have no delivery yet, and
-- their memory counts; a filter on 'none' reads the status sets and checks each job).
-- <tag>:inflight counts each tenant's queued and running jobs; <tag>:tenants names the
-- tenants that have lists in the partition.
local LIST_STATUSES = {'queued', 'running', 'completed', 'failed', 'cancelled'}
local LIST_STATES = {'none', 'pending', 'scheduled', 'delivering', 'delivered', 'failed'}
local IN_FLIGHT = {queued = true, running = true}
local UNLISTED_STATE = 'none'

-- "<prefix>:{pN}" from a job key "<prefix>:{pN}:job:<id>"
local function partition_tag(job_key)
  return string.match(job_key, '^(.*):job:[^:]*$')
end

local function list_member(created_at, id)
  return string.format('%013d', tonumber(created_at)) .. ':' .. id
end

local function list_key(tag, tenant, kind, state)
  return tag .. ':list:' .. tenant .. ':' .. kind .. ':' .. state
end

-- The value of `name` among field/value pairs args[from], args[from + 1], ...
local function pair_value(args, from, name)
  for i = from, #args - 1, 2 do
    if args[i] == name then return args[i + 1] end
  end
  return nil
end

local function count_in_flight(tag, tenant, n)
  local key = tag .. ':inflight'
  if redis.call('HINCRBY', key, tenant, n) < 0 then redis.call('HSET', key, tenant, 0) end
end

-- A job entered the lists (created): its status and delivery state sets, its tenant known.
local function list_job(tag, tenant, member, status, state)
  redis.call('SADD', tag .. ':tenants', tenant)
  redis.call('ZADD', list_key(tag, tenant, 's', status), 0, member)
  if state ~= UNLISTED_STATE then redis.call('ZADD', list_key(tag, tenant, 'd', state), 0, member) end
  if IN_FLIGHT[status] then count_in_flight(tag, tenant, 1) end
end

-- Move a job between its tenant's sets after its status and/or delivery state changed;
-- new_status or new_state nil: unchanged. `old` is {status, delivery_state, tenant,
-- created_at} as the job hash held them before the change. A job stored before the lists
-- existed enters them at its first change.
local function relist(tag, id, old, new_status, new_state)
  local tenant, created_at = old[3], old[4]
  if not tenant or not created_at then return end
  local member = list_member(created_at, id)
  if new_status and new_status ~= old[1] then
    if old[1] then redis.call('ZREM', list_key(tag, tenant, 's', old[1]), member) end
    redis.call('ZADD', list_key(tag, tenant, 's', new_status), 0, member)
    local delta = (IN_FLIGHT[new_status] and 1 or 0) - (IN_FLIGHT[old[1]] and 1 or 0)
    if delta ~= 0 then count_in_flight(tag, tenant, delta) end
  end
  if new_state and new_state ~= old[2] then
    if old[2] and old[2] ~= UNLISTED_STATE then
      redis.call('ZREM', list_key(tag, tenant, 'd', old[2]), member)
    end
    if new_state ~= UNLISTED_STATE then
      redis.call('ZADD', list_key(tag, tenant, 'd', new_state), 0, member)
    end
  end
end

-- A job whose record is gone leaves every set of its tenant (and the in-flight count if it
-- was queued or running: active records do not expire, but one may have been deleted).
local function unlist(tag, tenant, member)
  for _, s in ipairs(LIST_STATUSES) do
    local removed = redis.call('ZREM', list_key(tag, tenant, 's', s), member)
    if removed == 1 and IN_FLIGHT[s] then count_in_flight(tag, tenant, -1) end
  end
  for _, s in ipairs(LIST_STATES) do
    if s ~= UNLISTED_STATE then redis.call('ZREM', list_key(tag, tenant, 'd', s), member) end
  end
end
