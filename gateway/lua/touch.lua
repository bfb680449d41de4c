-- Refresh the presence of connected devices: last-seen time and time to live.
--
-- ARGV[1] the shard's key prefix, ARGV[2] presence TTL (ms),
-- ARGV[3] msgpack array of {did, connection id, last seen (unix ms)}
-- A presence another connection took is left alone. Last-seen only moves forward (several
-- nodes may hear one MQTT device) and the presence expires one TTL after it, whenever the
-- touch comes. Returns how many were refreshed.
local items = cmsgpack.unpack(ARGV[3])
local ttl = tonumber(ARGV[2])
local refreshed = 0
for i = 1, #items do
  local key = ARGV[1] .. 'p:' .. items[i][1]
  local cur = redis.call('HMGET', key, 'conn', 'seen')
  if cur[1] == items[i][2] then
    local seen = tonumber(items[i][3])
    local old = tonumber(cur[2]) or 0
    if seen > old then
      redis.call('HSET', key, 'seen', seen)
    else
      seen = old
    end
    redis.call('PEXPIREAT', key, seen + ttl)
    refreshed = refreshed + 1
  end
end
return refreshed
