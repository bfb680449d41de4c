-- Refresh the presence of connected devices: last-seen time and time to live.
--
-- ARGV[1] the shard's key prefix, ARGV[2] presence TTL (ms),
-- ARGV[3] msgpack array of {did, connection id, last seen (unix ms)}
-- A presence another connection took is left alone. Returns how many were refreshed.
local items = cmsgpack.unpack(ARGV[3])
local ttl = ARGV[2]
local refreshed = 0
for i = 1, #items do
  local key = ARGV[1] .. 'p:' .. items[i][1]
  if redis.call('HGET', key, 'conn') == items[i][2] then
    redis.call('HSET', key, 'seen', items[i][3])
    redis.call('PEXPIRE', key, ttl)
    refreshed = refreshed + 1
  end
end
return refreshed
