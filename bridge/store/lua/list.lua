-- One partition's part of a page of a tenant's jobs (bridge/store/lists.py merges the
-- partitions): from a position on, newest first, the jobs that match the filters.
-- KEYS: the tenant's status sets to read (those of the status filter, else all), then the
--       delivery sets of the delivery filter (none without one); all of one partition
-- ARGV: 1 number of status sets in KEYS, 2 position: list member to read below ('' = from
--       the newest), 3 want: matches to return at most, 4 scan: members to examine at most,
--       5 status filter (space-separated, '' = any), 6 delivery filter (likewise),
--       7 upstream filter ('' = any), 8 the tenant, 9.. job fields to return
-- The filters are read from the smaller of the two groups of sets (each holds every job of
-- the tenant once: a job is in one status set and one delivery set); the other filter and
-- the upstream are checked on the job. Members whose job is gone are removed on the way.
-- Returns {done (1: nothing below the last examined member), last examined member or '',
--          examined, {member, {field values}}, ...}
local n_status = tonumber(ARGV[1])
local want, scan = tonumber(ARGV[3]), tonumber(ARGV[4])
local tenant, upstream = ARGV[8], ARGV[7]
local fields = {}
for i = 9, #ARGV do fields[#fields + 1] = ARGV[i] end
local tag = string.match(KEYS[1], '^(.*):list:')

local function set_of(text)
  local out = {}
  for word in string.gmatch(text, '%S+') do out[word] = true end
  return out
end
local statuses, states = set_of(ARGV[5]), set_of(ARGV[6])
local check_status, check_state = ARGV[5] ~= '', ARGV[6] ~= ''

local function size(first, last)
  local n = 0
  for i = first, last do n = n + redis.call('ZCARD', KEYS[i]) end
  return n
end
local first, last = 1, n_status
if #KEYS > n_status and size(n_status + 1, #KEYS) < size(1, n_status) then
  first, last = n_status + 1, #KEYS
end

-- the newest `n` members below `from` over the chosen sets, newest first; and whether
-- any set may hold more below them
local function batch(from, n)
  local merged, more = {}, false
  for i = first, last do
    local got = redis.call('ZREVRANGEBYLEX', KEYS[i], from, '-', 'LIMIT', 0, n)
    if #got == n then more = true end
    for _, m in ipairs(got) do merged[#merged + 1] = m end
  end
  table.sort(merged, function(a, b) return a > b end)
  for i = #merged, n + 1, -1 do merged[i] = nil; more = true end
  return merged, more
end

-- field positions of what the filters check
local at = {}
for i, f in ipairs(fields) do at[f] = i end

local function matches(values)
  if values[at.tenant] ~= tenant then return false end
  if check_status and not statuses[values[at.status]] then return false end
  -- a job with no delivery yet stores no delivery_state (the field's default: 'none')
  if check_state and not states[values[at.delivery_state] or 'none'] then return false end
  if upstream ~= '' and values[at.upstream] ~= upstream then return false end
  return true
end

local out, found, examined, position = {}, 0, 0, ARGV[2]
local from = position == '' and '+' or '(' .. position
local done = false
while found < want and examined < scan do
  local members, more = batch(from, math.min(math.max(want - found, 16), scan - examined))
  local i = 1
  while i <= #members and found < want and examined < scan do
    local member = members[i]
    local id = string.sub(member, 15)
    local values = redis.call('HMGET', tag .. ':job:' .. id, unpack(fields))
    examined, position = examined + 1, member
    if not values[at.status] then
      if redis.call('EXISTS', tag .. ':job:' .. id) == 0 then unlist(tag, tenant, member) end
    elseif matches(values) then
      found = found + 1
      out[#out + 1] = {member, values}
    end
    i = i + 1
  end
  if i > #members and not more then
    done = true
    break
  end
  from = '(' .. position
end
local reply = {done and 1 or 0, position, examined}
for _, m in ipairs(out) do reply[#reply + 1] = m end
return reply
