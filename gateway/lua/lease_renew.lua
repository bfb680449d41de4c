-- Renew a lease only while this node holds it: compare-and-PEXPIRE, never a take.
--
-- KEYS[1] the lease key; ARGV[1] this node's id; ARGV[2] lease time (ms)
-- Returns 1 when renewed, 0 when the lease is another node's or gone.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
