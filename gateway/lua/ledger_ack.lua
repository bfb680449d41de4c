-- Acknowledge ledger entries that are now in the database: XACK, XDEL and lower the backlog,
-- each only for entries still pending in the group (a claimed entry is never counted twice).
--
-- KEYS pairs: a ledger stream, its backlog counter (one pair per stream; on a Redis Cluster
--             one stream per call, as a call's keys must share a slot)
-- ARGV[1] consumer group, then per stream in KEYS' order: the number of its entries, then
--         pairs: entry id, records in the entry
-- Returns the number of records acknowledged.
local acked_records = 0
local a = 2
for k = 1, #KEYS, 2 do
  local entries = tonumber(ARGV[a])
  a = a + 1
  local acked = 0
  for _ = 1, entries do
    if redis.call('XACK', KEYS[k], ARGV[1], ARGV[a]) == 1 then
      redis.call('XDEL', KEYS[k], ARGV[a])
      acked = acked + tonumber(ARGV[a + 1])
    end
    a = a + 2
  end
  if acked > 0 then
    redis.call('DECRBY', KEYS[k + 1], acked)
  end
  acked_records = acked_records + acked
end
return acked_records
