-- A provider's push for a job (CONTRACT §5b): make it due now and tell every process.
-- A running job that no claim holds is re-scored to now in the due schedule; one that a
-- claim holds (lease_until still ahead) is left to its holder, who learns of the push
-- from the notice, as does the submitter of a job still queued (its submit is under
-- way; submitting it again would start it twice). Nothing else of the job changes: its
-- result is only ever what the provider answers to pushbridge's own poll.
-- KEYS: 1 job hash, 2 due zset
-- ARGV: 1 id, 2 publish command (PUBLISH or SPUBLISH), 3 the partition's channel
-- Returns the job's status, or 'missing'.
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 'missing' end
if status ~= 'queued' and status ~= 'running' then return status end
local now = now_ms()
local how = 'queued'
if status == 'running' then
  local lease = tonumber(redis.call('HGET', KEYS[1], 'lease_until') or '0') or 0
  if lease > now then
    how = 'held'
  else
    redis.call('ZADD', KEYS[2], 'XX', 'LT', now, ARGV[1])
    how = 'due'
  end
end
redis.call('HSET', KEYS[1], 'pushed_at', now)
local upstream = redis.call('HGET', KEYS[1], 'upstream') or ''
redis.call(ARGV[2], ARGV[3], 'push ' .. ARGV[1] .. ' ' .. how .. ' ' .. upstream)
return status
