-- A verified login takes the device's presence, wherever its older connection lives.
--
-- KEYS[1] presence hash p:<did>, KEYS[2] meter state m:<did> (holds the desired state too)
-- ARGV[1] node id, ARGV[2] connection id, ARGV[3] now (unix ms), ARGV[4] presence TTL (ms),
-- ARGV[5] kick channel prefix ("aq:node:"), ARGV[6] did
-- Returns {old node or false, old connection or false, watermark boot, watermark rec,
--          desired version, lock, remaining_ml, rental_expires_at} (false where unknown).
local old = redis.call('HMGET', KEYS[1], 'node', 'conn')
redis.call('HSET', KEYS[1], 'node', ARGV[1], 'conn', ARGV[2], 'since', ARGV[3], 'seen', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
if old[1] and old[1] ~= ARGV[1] then
  redis.call('PUBLISH', ARGV[5] .. old[1], 'kick ' .. ARGV[6] .. ' ' .. old[2])
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
