-- Refresh the presence of connected devices: last-seen time and time to live.
--
-- ARGV[1] the shard's key prefix, ARGV[2] presence TTL (ms),
-- ARGV[3] msgpack array of {did, connection id, last seen (unix ms)}
-- A presence another connection took is left alone. Last-seen only moves forward (several
-- nodes may hear one MQTT device) and the presence expires one TTL after it, whenever the
-- touch comes. The last-session record l:<did> gets the same last-seen, so a presence that
-- expires without a release (its node died) can still be dated. A presence that expired while
-- its connection was still alive (last seen moved after the previous touch, and that touch
-- came late) is restored from the last-session record, as long as no other login came since.
-- Returns how many were refreshed.
local items = cmsgpack.unpack(ARGV[3])
local ttl = tonumber(ARGV[2])
local refreshed = 0
for i = 1, #items do
  local key = ARGV[1] .. 'p:' .. items[i][1]
  local last = ARGV[1] .. 'l:' .. items[i][1]
  local seen = tonumber(items[i][3])
  local cur = redis.call('HMGET', key, 'conn', 'seen')
  local live = cur[1] == items[i][2]
  if not cur[1] then
    local prev = redis.call('HMGET', last, 'conn', 'node', 'since', 'off')
    local since = tonumber(prev[3])
    if prev[1] == items[i][2] and since and (not prev[4] or tonumber(prev[4]) < since) then
      redis.call('HSET', key, 'node', prev[2], 'conn', prev[1], 'since', prev[3])
      live = true
    end
  end
  if live then
    local old = tonumber(cur[2]) or 0
    if seen > old then
      redis.call('HSET', key, 'seen', seen)
    else
      seen = old
    end
    redis.call('PEXPIREAT', key, seen + ttl)
    redis.call('HSET', last, 'seen', seen)  -- its TTL is renewed at each claim and release
    refreshed = refreshed + 1
  end
end
return refreshed
