-- Take a lease, or keep it: one owner at a time (a node's singleton job, gateway/lease.py).
--
-- KEYS[1] the lease key; ARGV[1] this node's id; ARGV[2] lease time (ms)
-- Returns 1 when this node holds the lease (taken or renewed), 0 when another node does.
local owner = redis.call('GET', KEYS[1])
if owner == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if owner then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
