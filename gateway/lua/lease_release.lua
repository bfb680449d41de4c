-- Release a lease only while this node holds it: compare-and-DEL in one step, so a node whose
-- lease expired and was taken by another cannot delete the other's.
--
-- KEYS[1] the lease key; ARGV[1] this node's id
-- Returns 1 when released, 0 when the lease is another node's or gone.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
