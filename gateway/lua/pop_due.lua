-- Take the members of a schedule (sorted set) whose time has come, atomically.
--
-- KEYS[1] the sorted set; ARGV[1] the highest score due; ARGV[2] most members to take
-- Returns {member1, score1, member2, score2, ...}; those members are removed.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0, ARGV[2])
for i = 1, #due, 2 do
  redis.call('ZREM', KEYS[1], due[i])
end
return due
