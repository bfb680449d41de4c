-- The command log: one hash per command, next to its device's other keys (same shard slot).
--
-- Keys built here all carry the device's shard hash tag, so they sit in the slot of KEYS[1].
-- ARGV[1] op, ARGV[2] now (unix ms), ARGV[3] the device's shard prefix ("aq:{07}:"),
-- ARGV[4] node channel prefix ("aq:node:"), ARGV[5] did, ARGV[6..] the op's arguments:
--
--   create  cid cmd_op args exp origin issuer kind target_version keep_s
--           kind "once": route it to the node holding the device ("cmd ..." on its channel);
--             no presence, or no node listening: failed at once (error device_offline).
--           kind "state": a desired-state change already made by service.lua (which told the
--             holding node); succeeded as soon as the device holds target_version or newer.
--           Returns {state, node or false}.
--   sent      cid              the holding node wrote it to the device     -> {changed}
--   delivered cid              the device acked the COMMAND frame           -> {changed}
--   result    cid rc out       the device's RESULT (rc: 0 ok, 1 failed, 2 rejected, 3 expired)
--                              Closing a command publishes "res <did> <cid> <record>" to the node
--                              that issued it (record: msgpack of HGETALL's flat list).
--   settle    version          the device holds this desired-state version: settle its state
--                              commands with target_version <= version     -> {settled}
--   timeout   due_key limit    (scheduler) time out commands of a shard past their deadline;
--                              ARGV[3]/ARGV[5] are ignored: keys come from the due entries
--   reroute   cid node         the device is no longer on `node`: send it to where it is now
--                              -> {1 routed, 0 not routed}
--
-- Hash fields: did cid op args exp kind state rc out error origin node issuer target
--              created sent delivered done (unix ms)
-- Per device: co:<did> sorted set cid -> exp of its open commands, cl:<did> list of its
-- latest cids (newest first, capped), cs:<did> hash {applied = highest desired version applied}.
-- Per shard: cmd:due sorted set "<did> <cid>" -> deadline (ms) of open one-shot commands.

local op = ARGV[1]
local now = tonumber(ARGV[2])
local shard = ARGV[3]
local channels = ARGV[4]
local did = ARGV[5]
local RECENT = 100
local FINAL = {succeeded = true, failed = true, rejected = true, timed_out = true, expired = true}
local RC_STATE = {['0'] = 'succeeded', ['1'] = 'failed', ['2'] = 'rejected', ['3'] = 'expired'}

local function ckey(d, cid) return shard .. 'c:' .. d .. ':' .. cid end
local function open_key(d) return shard .. 'co:' .. d end
local function recent_key(d) return shard .. 'cl:' .. d end
local function due_key() return shard .. 'cmd:due' end

-- Close a command: final state, out of the open set and the due set, tell the node that issued it.
local function finish(key, d, cid, state, fields)
  redis.call('HSET', key, 'state', state, 'done', now, unpack(fields))
  redis.call('ZREM', open_key(d), cid)
  redis.call('ZREM', due_key(), d .. ' ' .. cid)
  local origin = redis.call('HGET', key, 'origin')
  if origin then
    -- The whole record rides along (msgpack of the flat field list): the waiter answers
    -- without reading it back.
    local record = cmsgpack.pack(redis.call('HGETALL', key))
    redis.call('PUBLISH', channels .. origin, 'res ' .. d .. ' ' .. cid .. ' ' .. record)
  end
end

if op == 'create' then
  local cid, cmd_op, args, exp = ARGV[6], ARGV[7], ARGV[8], tonumber(ARGV[9])
  local origin, issuer, kind, target, keep_s = ARGV[10], ARGV[11], ARGV[12], ARGV[13], ARGV[14]
  local key = ckey(did, cid)
  redis.call('HSET', key, 'did', did, 'cid', cid, 'op', cmd_op, 'args', args, 'exp', exp,
    'kind', kind, 'state', 'queued', 'origin', origin, 'issuer', issuer, 'target', target,
    'created', now)
  redis.call('EXPIRE', key, keep_s)
  redis.call('LPUSH', recent_key(did), cid)
  redis.call('LTRIM', recent_key(did), 0, RECENT - 1)
  redis.call('EXPIRE', recent_key(did), keep_s)
  local node = redis.call('HGET', shard .. 'p:' .. did, 'node')
  if kind == 'state' then
    local applied = tonumber(redis.call('HGET', shard .. 'cs:' .. did, 'applied') or '-1')
    if applied >= tonumber(target) then
      redis.call('HSET', key, 'state', 'succeeded', 'rc', 0, 'done', now, 'node', node or '')
      return {'succeeded', node}
    end
    redis.call('ZADD', open_key(did), exp, cid)
    redis.call('EXPIRE', open_key(did), keep_s)
    if node then
      redis.call('HSET', key, 'state', 'sent', 'sent', now, 'node', node)
      return {'sent', node}
    end
    return {'queued', false}
  end
  if not node then
    redis.call('HSET', key, 'state', 'failed', 'error', 'device_offline', 'done', now)
    return {'failed', false}
  end
  local message = 'cmd ' .. did .. ' ' .. cid .. ' ' .. cmd_op .. ' ' .. exp .. ' ' .. args
  if redis.call('PUBLISH', channels .. node, message) == 0 then
    -- Its node is gone (the presence outlives a crashed node by at most the idle timeout).
    redis.call('HSET', key, 'state', 'failed', 'error', 'device_offline', 'done', now,
      'node', node)
    return {'failed', node}
  end
  redis.call('HSET', key, 'node', node)
  redis.call('ZADD', open_key(did), exp, cid)
  redis.call('EXPIRE', open_key(did), keep_s)
  redis.call('ZADD', due_key(), exp * 1000, did .. ' ' .. cid)
  return {'queued', node}
end

if op == 'sent' or op == 'delivered' then
  local key = ckey(did, ARGV[6])
  local state = redis.call('HGET', key, 'state')
  if state == 'queued' or (op == 'delivered' and state == 'sent') then
    redis.call('HSET', key, 'state', op, op, now)
    return {1}
  end
  return {0}
end

if op == 'result' then
  local cid, rc, out = ARGV[6], ARGV[7], ARGV[8]
  local key = ckey(did, cid)
  local state = redis.call('HGET', key, 'state')
  if not state or FINAL[state] then return {0} end
  local fields = {'rc', rc}
  if out ~= '-' then fields = {'rc', rc, 'out', out} end
  finish(key, did, cid, RC_STATE[rc] or 'failed', fields)
  return {1}
end

if op == 'settle' then
  local version = tonumber(ARGV[6])
  local cs = shard .. 'cs:' .. did
  local applied = tonumber(redis.call('HGET', cs, 'applied') or '-1')
  if version > applied then
    redis.call('HSET', cs, 'applied', version)
    redis.call('EXPIRE', cs, 90 * 86400)
  end
  local settled = 0
  for _, cid in ipairs(redis.call('ZRANGE', open_key(did), 0, -1)) do
    local key = ckey(did, cid)
    local c = redis.call('HMGET', key, 'kind', 'target', 'state')
    if not c[1] then
      redis.call('ZREM', open_key(did), cid)  -- its hash expired
    elseif c[1] == 'state' and tonumber(c[2]) <= version and not FINAL[c[3]] then
      finish(key, did, cid, 'succeeded', {'rc', 0})
      settled = settled + 1
    end
  end
  return {settled}
end

if op == 'timeout' then
  local due = ARGV[6]
  local prefix = string.sub(due, 1, #due - #'cmd:due')
  local timed_out = 0
  for _, entry in ipairs(redis.call('ZRANGEBYSCORE', due, '-inf', now, 'LIMIT', 0, tonumber(ARGV[7]))) do
    local space = string.find(entry, ' ', 1, true)
    local d, cid = string.sub(entry, 1, space - 1), string.sub(entry, space + 1)
    shard = prefix
    local key = ckey(d, cid)
    local state = redis.call('HGET', key, 'state')
    if state and not FINAL[state] then
      finish(key, d, cid, 'timed_out', {'error', 'no result by the deadline'})
      timed_out = timed_out + 1
    else
      redis.call('ZREM', due, entry)
      redis.call('ZREM', open_key(d), cid)
    end
  end
  return {timed_out}
end

if op == 'reroute' then
  local cid, old_node = ARGV[6], ARGV[7]
  local key = ckey(did, cid)
  local c = redis.call('HMGET', key, 'state', 'op', 'args', 'exp', 'node')
  if not c[1] or FINAL[c[1]] or tonumber(c[4]) * 1000 < now then return {0} end
  local node = redis.call('HGET', shard .. 'p:' .. did, 'node')
  -- Not back yet, back on the node that asks, or already routed to where it is now.
  if not node or node == old_node or node == c[5] then return {0} end
  local message = 'cmd ' .. did .. ' ' .. cid .. ' ' .. c[2] .. ' ' .. c[4] .. ' ' .. c[3]
  if redis.call('PUBLISH', channels .. node, message) == 0 then return {0} end
  redis.call('HSET', key, 'node', node)
  return {1}
end

return redis.error_reply('command.lua: unknown op ' .. tostring(op))
