-- Prepended to every script by bridge/scripts.py. Times come from the store's clock
-- (Redis TIME), never from a replica's, so replicas with skewed clocks agree.
local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local function now_ms()
  return math.floor(now_us() / 1000)
end
