-- A verified login takes the device's presence, wherever its older connection lives.
--
-- KEYS[1] presence hash p:<did>, KEYS[2] meter state m:<did> (holds the desired state too)
-- ARGV[1] node id, ARGV[2] connection id, ARGV[3] now (unix ms), ARGV[4] presence TTL (ms),
-- ARGV[5] kick channel prefix ("aq:node:"), ARGV[6] did,
-- ARGV[7] sessions the presence history lists (presence_history_size, the current one included)
-- Returns {old node or false, old connection or false, watermark boot, watermark rec,
--          desired version, lock, remaining_ml, rental_expires_at} (false where unknown).
--
-- The last-session hash l:<did> (same prefix and slot as KEYS[1]) gets the new connection;
-- the session it replaces is closed there first: "replaced" when its presence was still held,
-- and when its presence had expired without a release, "idle_timeout" if the same node claims
-- again (it is alive: its release is on the way) or "node_lost", at its last seen + TTL.
-- The session so closed (or closed earlier by release.lua) is then pushed, complete, onto the
-- presence history ph:<did> (same slot), newest first, capped at ARGV[7] - 1 entries, each
-- msgpack {node, since, seen, off, why}: a release costs nothing more, and a device's history
-- is in order because only its logins push. Its end moves to the record's poff/pwhy.

-- Publish to a node: on the channel `channels .. node`, or, when `channels` is "" (a Redis
-- Cluster), on the node's sharded channel in this script's slot (gateway/keys.py node_channels).
local function publish_node(channels, node, message)
  if channels == '' then
    local tag = string.match(KEYS[1], '^(.-{%d+}:)')
    return redis.call('SPUBLISH', tag .. 'node:' .. node, message)
  end
  return redis.call('PUBLISH', channels .. node, message)
end
local LAST_TTL_MS = 7776000000  -- 90 days (gateway/keys.py LAST_SESSION_TTL_MS)
local did = ARGV[6]
local shard = string.sub(KEYS[1], 1, #KEYS[1] - #did - 2)
local last = shard .. 'l:' .. did

-- The session the last-session record holds (`prev`: node, since, seen, ttl, off, why), ended
-- by now at `off` for `why`, goes onto the history. Returns its end as the record's poff/pwhy
-- (shown as "offline since, why" while the new one runs), so that off/why, once written, are
-- the new session's own (release.lua writes them once).
local function archive(prev, off, why)
  if prev[5] or prev[6] then redis.call('HDEL', last, 'off', 'why') end
  local keep = tonumber(ARGV[7]) - 1
  local history = shard .. 'ph:' .. did
  if keep < 1 then
    redis.call('DEL', history)
  else
    local since = tonumber(prev[2])
    local entry = cmsgpack.pack({prev[1] or '', since, tonumber(prev[3]) or since, off, why})
    redis.call('LPUSH', history, entry)
    redis.call('LTRIM', history, 0, keep - 1)
    redis.call('PEXPIRE', history, LAST_TTL_MS)
  end
  return {'poff', off, 'pwhy', why}
end

local old = redis.call('HMGET', KEYS[1], 'node', 'conn', 'since')
local since = ARGV[3]
local ended = {}  -- poff/pwhy of the session closed here
if old[1] == ARGV[1] and old[2] == ARGV[2] then
  since = old[3] or since  -- the same link claimed again (MQTT via another bridge): it goes on
else
  local prev = redis.call('HMGET', last, 'node', 'since', 'seen', 'ttl', 'off', 'why')
  local prev_since = tonumber(prev[2])
  if prev_since then
    local off, why = tonumber(prev[5]), prev[6] or ''
    if old[2] then
      off, why = tonumber(ARGV[3]), 'replaced'
    elseif not off or off < prev_since then  -- no release: dated at its last seen + TTL
      why = 'node_lost'
      if prev[1] == ARGV[1] then why = 'idle_timeout' end
      off = math.min((tonumber(prev[3]) or prev_since) + (tonumber(prev[4]) or 0),
        tonumber(ARGV[3]))
    end
    ended = archive(prev, off, why)
  end
end
redis.call('HSET', KEYS[1], 'node', ARGV[1], 'conn', ARGV[2], 'since', since, 'seen', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('HSET', last, 'node', ARGV[1], 'conn', ARGV[2], 'since', since, 'seen', ARGV[3],
  'ttl', ARGV[4], unpack(ended))
redis.call('PEXPIRE', last, LAST_TTL_MS)
if old[1] and old[1] ~= ARGV[1] then
  publish_node(ARGV[5], old[1], 'kick ' .. ARGV[6] .. ' ' .. old[2])
end
local wm = {false, false}
local meter = redis.call('GET', KEYS[2])  -- meter.lua's packed state: 1 b0, 2 w0
if meter then wm = cmsgpack.unpack(meter) end
-- The desired state is meter.lua's fields 21 version, 22 lock bits, 20 remaining_ml,
-- 23 rental_expires_at (service.lua writes them).
local lock = false
if wm[22] then
  lock = 0
  if wm[22] ~= 0 then lock = 1 end
end
return {old[1], old[2], wm[1], wm[2], wm[21] or false, lock, wm[20] or false, wm[23] or false}
