-- Connections that ended give up their presence, unless a newer login already took it, and
-- their last-session record l:<did> says when and why they ended.
--
-- ARGV[1] the shard's key prefix,
-- ARGV[2] msgpack array of {did, connection id, reason, ended at (unix ms), last seen (unix ms)}
-- The record is written when the connection is still the device's last session and has not
-- ended yet (also when its presence has just expired: the reason is still known here).
-- Returns how many presences were removed.
local LAST_TTL_MS = 7776000000  -- 90 days (gateway/keys.py LAST_SESSION_TTL_MS)
local items = cmsgpack.unpack(ARGV[2])
local removed = 0
for i = 1, #items do
  local did, conn = items[i][1], items[i][2]
  local key = ARGV[1] .. 'p:' .. did
  if redis.call('HGET', key, 'conn') == conn then
    redis.call('DEL', key)
    removed = removed + 1
  end
  local last = ARGV[1] .. 'l:' .. did
  local cur = redis.call('HMGET', last, 'conn', 'since', 'seen', 'off')
  local since = tonumber(cur[2])
  if cur[1] == conn and since and (not cur[4] or tonumber(cur[4]) < since) then
    local seen = math.max(tonumber(cur[3]) or 0, tonumber(items[i][5]) or 0)
    redis.call('HSET', last, 'off', math.max(items[i][4], since), 'why', items[i][3],
      'seen', seen)
    redis.call('PEXPIRE', last, LAST_TTL_MS)
  end
end
return removed
