-- Connections that ended give up their presence, unless a newer login already took it.
--
-- ARGV[1] the shard's key prefix, ARGV[2] msgpack array of {did, connection id}
-- Returns how many presences were removed.
local pairs_ = cmsgpack.unpack(ARGV[2])
local removed = 0
for i = 1, #pairs_ do
  local key = ARGV[1] .. 'p:' .. pairs_[i][1]
  if redis.call('HGET', key, 'conn') == pairs_[i][2] then
    redis.call('DEL', key)
    removed = removed + 1
  end
end
return removed
