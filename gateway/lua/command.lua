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
--             holding node); queued until the device holds target_version or newer, then
--             succeeded (at once when it holds it already).
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
--   reroute   cid node         the link `node` sent it on is gone: send it (DUP) to where the
--                              device is now, unless it went there already
--   resend    cid node         `node` wants to resend it on the link it sent it on (no RESULT)
--                              Both answer {code}: 0 the device is nowhere (ask again later),
--                              1 routed ("cmd ... dup" to the node holding the device),
--                              2 over (final, unknown or past its deadline: never send it again),
--                              3 (resend only) still open and the device still on the connection
--                              it was routed to: the asking node resends it itself.
--   poured    cid ml ref       a dispense_done EVENT naming the command was stored (ref: its
--                              ledger record "boot:rec"): a dispense keeps the first one's ml
--                              and ref, whatever its state (a timed_out dispense that poured
--                              says so)                                     -> {linked}
--
-- Hash fields: did cid op args exp kind state rc out error origin node issuer target
--              created sent delivered done (unix ms), to (the presence it was last routed to:
--              "<node> <conn> <since>", one per connection of the device), poured pour
-- Per device: co:<did> sorted set cid -> exp of its open commands, cl:<did> list of its
-- latest cids (newest first, capped), cs:<did> hash {applied = highest desired version applied}.
-- Per shard: cmd:due sorted set "<did> <cid>" -> deadline (ms) of open one-shot commands.

-- Publish to a node: on the channel `channels .. node`, or, when `channels` is "" (a Redis
-- Cluster), on the node's sharded channel in this script's slot (gateway/keys.py node_channels).
local function publish_node(channels, node, message)
  if channels == '' then
    local tag = string.match(KEYS[1], '^(.-{%d+}:)')
    return redis.call('SPUBLISH', tag .. 'node:' .. node, message)
  end
  return redis.call('PUBLISH', channels .. node, message)
end

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
-- The device's presence: its node, and "<node> <conn> <since>", which names one connection
-- (an MQTT device's conn id is the same on every connection; its since is not).
local function presence(d)
  local p = redis.call('HMGET', shard .. 'p:' .. d, 'node', 'conn', 'since')
  if not p[1] then return false, false end
  return p[1], p[1] .. ' ' .. (p[2] or '') .. ' ' .. (p[3] or '')
end

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
    publish_node(channels, origin, 'res ' .. d .. ' ' .. cid .. ' ' .. record)
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
  local node, to = presence(did)
  if kind == 'state' then
    local applied = tonumber(redis.call('HGET', shard .. 'cs:' .. did, 'applied') or '-1')
    if applied >= tonumber(target) then
      redis.call('HSET', key, 'state', 'succeeded', 'rc', 0, 'done', now, 'node', node or '')
      return {'succeeded', node}
    end
    redis.call('ZADD', open_key(did), exp, cid)
    redis.call('EXPIRE', open_key(did), keep_s)
    -- Queued until the device holds the version: no node writes this command itself (the
    -- device gets the whole desired state, as SET_STATE or in AUTH_OK), so it is never "sent".
    if node then redis.call('HSET', key, 'node', node) end
    return {'queued', node}
  end
  if not node then
    redis.call('HSET', key, 'state', 'failed', 'error', 'device_offline', 'done', now)
    return {'failed', false}
  end
  local message = 'cmd ' .. did .. ' ' .. cid .. ' ' .. cmd_op .. ' ' .. exp .. ' ' .. args
  if publish_node(channels, node, message) == 0 then
    -- Its node is gone (the presence outlives a crashed node by at most the idle timeout).
    redis.call('HSET', key, 'state', 'failed', 'error', 'device_offline', 'done', now,
      'node', node)
    return {'failed', node}
  end
  redis.call('HSET', key, 'node', node, 'to', to)
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

if op == 'reroute' or op == 'resend' then
  -- Every copy after the first goes through here, so a final command is never sent again,
  -- by any node (a device that rebooted remembers no cid and would run it twice).
  local cid = ARGV[6]
  local key = ckey(did, cid)
  local c = redis.call('HMGET', key, 'state', 'op', 'args', 'exp', 'kind', 'to')
  if not c[1] or FINAL[c[1]] or c[5] ~= 'once' or tonumber(c[4]) * 1000 < now then
    return {2}
  end
  local node, to = presence(did)
  if not node then return {0} end
  if to == c[6] then
    -- resend: the device is still on the connection it was routed to. reroute: a copy went
    -- to its current connection already (another node asked first).
    if op == 'resend' then return {3} end
    return {1}
  end
  local message = 'cmd ' .. did .. ' ' .. cid .. ' ' .. c[2] .. ' ' .. c[4] .. ' ' .. c[3] .. ' dup'
  if publish_node(channels, node, message) == 0 then return {0} end
  redis.call('HSET', key, 'node', node, 'to', to)
  return {1}
end

if op == 'poured' then
  local cid, ml, ref = ARGV[6], ARGV[7], ARGV[8]
  local key = ckey(did, cid)
  local c = redis.call('HMGET', key, 'op', 'pour')
  if c[1] ~= '1' or c[2] then return {0} end  -- not a dispense (or unknown), or linked already
  redis.call('HSET', key, 'poured', ml, 'pour', ref)
  return {1}
end

return redis.error_reply('command.lua: unknown op ' .. tostring(op))
