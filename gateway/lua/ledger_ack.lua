-- Acknowledge ledger entries that are now in the database: XACK, XDEL and lower the backlog,
-- each only for entries still pending in the group (a claimed entry is never counted twice).
--
-- KEYS[1] the shard's ledger stream, KEYS[2] the shard's backlog counter
-- ARGV[1] consumer group, then pairs: entry id, records in the entry
-- Returns the number of records acknowledged.
local acked_records = 0
for i = 2, #ARGV, 2 do
  if redis.call('XACK', KEYS[1], ARGV[1], ARGV[i]) == 1 then
    redis.call('XDEL', KEYS[1], ARGV[i])
    acked_records = acked_records + tonumber(ARGV[i + 1])
  end
end
if acked_records > 0 then
  redis.call('DECRBY', KEYS[2], acked_records)
end
return acked_records
