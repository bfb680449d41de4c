-- Deduplicate, meter and ledger a metering round's device records, atomically.
--
-- On one Redis a round is one call for every shard it touches, and one ledger stream entry; on
-- a Redis Cluster (keys of one call must share a slot) it is one call per shard, each with its
-- shard's stream (gateway/meter.py MeterScript).
--
-- KEYS[1] the ledger stream the round's entry goes to, KEYS[2] that stream's backlog counter
--         (the first shard's of the call)
-- ARGV[1] msgpack array of groups, one per shard: {key prefix ("aq:{07}:"), records}, records
--         an array of {did, frame_type, boot, rec, ts, flow_total (-1: none), cnt_epoch (-1:
--         none), event_kind, encoding, payload, state_bits (-1: none)}
-- ARGV[2] received-at, unix milliseconds
-- ARGV[3] most out-of-order records remembered per boot
-- ARGV[4] least milliseconds between two pushes of the desired state to a device whose reported
--         lock differs from it
-- ARGV[5] node channel prefix ("aq:node:"): desired-state changes go to the node holding the device
-- Returns msgpack {rc1, wm_boot1, wm_rec1, rc2, ..., backlog}, the records of every group in
-- order: rc 0 stored, 1 duplicate, 2 stale; (wm_boot, wm_rec) is the record's boot and the
-- highest rec stored with no gap below; backlog is KEYS[2] after the round.
--
-- Per device, one string key m:<did> holds a msgpack array (read and written once per device
-- per round, the round's devices by MGET and MSET: far cheaper in Lua than hash fields), false
-- where unknown:
--   1 b0, 2 w0, 3 o0, 4 b1, 5 w1, 6 o1: the newest two boots, their watermark and the recs
--     held out of order (",r1,r2,")
--   7 le, 8 lt: the current counter epoch and its highest reading (le = -1: readings seen
--     before any epoch was named); 9 pe, 10 pt: the previous epoch's
--   11 mt: metered total; 12 n: records stored
--   13 tb, 14 tr, 15 ts, 16 enc, 17 payload, 18 at: the newest telemetry (position, device
--     time, payload encoding and bytes, received at)
--   19 mode, 20 rm, 21 ver, 22 lk, 23 rx, 24 lo, 25 lf, 26 rp: the service state (service.lua
--     writes it): device mode, remaining_ml (volume rental; false: not metered against a
--     quota), desired-state version, lock bits (1 quota exhausted, 2 rental expired, 4 locked
--     by a person), rental_expires_at, low-balance threshold and whether it fired, and when the
--     desired state was last pushed (unix ms)
--
-- Volume rental: every metered delta is taken off rm in the same step. When rm reaches 0 the
-- quota lock bit is set, the version bumped and the new desired state published to the node
-- holding the device ("state <did> <version> <lock> <rm> <rx>" on its node channel), and a
-- service event goes into the ledger entry (field svc) for the ledger writer to record.
-- gateway/meter.py MeterState reads it (meter_fields by these short names).
--
-- The metering rule: the water of a device is, over its counter epochs, the sum of the highest
-- reading seen in each epoch (a counter counts from 0 in its epoch). It does not depend on the
-- order readings arrive in, so resends, reordering and late records never count twice.

-- The library functions the per-record code calls, as locals: a global is a table lookup at
-- each use, a local (or upvalue) is not. The hot loops append by counters, not `#t + 1` (the
-- length operator searches the table for its end each time).
local call, pack, unpack_mp = redis.call, cmsgpack.pack, cmsgpack.unpack
local find, sub, band, bor = string.find, string.sub, bit.band, bit.bor
local tonumber, unpack = tonumber, unpack
local byte, ARRAY16, select, unpack_limit = string.byte, 0xdc, select, cmsgpack.unpack_limit

-- Publish to a node: on the channel `channels .. node`, or, when `channels` is "" (a Redis
-- Cluster), on the node's sharded channel in this script's slot (gateway/keys.py node_channels).
local function publish_node(channels, node, message)
  if channels == '' then
    local tag = string.match(KEYS[1], '^(.-{%d+}:)')
    return call('SPUBLISH', tag .. 'node:' .. node, message)
  end
  return call('PUBLISH', channels .. node, message)
end

-- ARGV[1] is read a record at a time by cmsgpack.unpack_limit, not by one cmsgpack.unpack:
-- that builds each record's table by growing it a field at a time (five resizes for 11), where
-- a table constructor of unpack_limit's values is sized once (measured: 0.15-0.35 us of Redis
-- CPU a record, docs/benchmarks.md, session 12). A record's table is {the offset after it,
-- did, frame_type, ...}: its fields from index 2.
local arg1 = ARGV[1]
local RECORD = 0x9b  -- a record's header: a msgpack array of 11

-- The length of the msgpack array whose header is at (0-based) offset `at`, and the offset
-- after that header.
local function array_at(at)
  local b = byte(arg1, at + 1)
  if b and b >= 0x90 and b <= 0x9f then return b - 0x90, at + 1 end
  if b == 0xdc then
    local b1, b2 = byte(arg1, at + 2, at + 3)
    return b1 * 256 + b2, at + 3
  end
  if b == 0xdd then
    local b1, b2, b3, b4 = byte(arg1, at + 2, at + 5)
    return ((b1 * 256 + b2) * 256 + b3) * 256 + b4, at + 5
  end
  error('meter.lua: ARGV[1]: no array at byte ' .. at)
end

local groups = {}
local ngroups, at = array_at(0)
for g = 1, ngroups do
  local _, prefix, count
  _, at = array_at(at)  -- the group: {prefix, records}
  at, prefix = unpack_limit(arg1, 1, at)
  count, at = array_at(at)
  local records = {}
  for i = 1, count do
    if byte(arg1, at + 1) ~= RECORD then error('meter.lua: ARGV[1]: no record at byte ' .. at) end
    local r = {unpack_limit(arg1, 11, at + 1)}
    records[i] = r
    at = r[1]
  end
  groups[g] = {prefix, records}
end
local now_ms = tonumber(ARGV[2])
local ooo_limit = tonumber(ARGV[3])
local reconcile_ms = tonumber(ARGV[4])

local STORED, DUPLICATE, STALE = 0, 1, 2
local TELEMETRY = 0x20

-- The state is worked on as the array it is stored as (v[B0] ...), false where unknown: no
-- table of named fields is built and none packed from it per device (measured: the named copy
-- and its repacking were a large part of Redis' CPU per device at window 1).
local B0, W0, O0, B1, W1, O1, LE, LT, PE, PT, MT, N = 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12
local TB, TR, TS, ENC, PAYLOAD, AT = 13, 14, 15, 16, 17, 18
local MODE, RM, VER, LK, RX, LO, LF, RP = 19, 20, 21, 22, 23, 24, 25, 26
local f = false

-- Every device of the round is read with MGET and written back with MSET, CHUNK keys a call,
-- not by a GET and a SET each: at window 1 every record is its own device, and a redis.call
-- per device cost ~2 us per record (benchmarks/meter_lua.py). CHUNK keeps unpack() well under
-- Lua's C stack limit (8000 values).
local CHUNK = 500
local slot_of = {}  -- did -> its index in keys, raws, states, dirty (the order first seen)
local keys = {}
local nkeys = 0  -- #keys
local raws = {}
local states = {}
local dirty = {}

-- The device's state as meter.lua works on it, from its stored bytes (false: none yet). A
-- state of 16 fields or more (an array16 header: 3 bytes) is unpacked as its fields into a
-- table constructor, as cmsgpack.unpack grows the table it builds a field at a time (six
-- resizes for 26; measured 0.35-0.4 us of Redis CPU a record at window 1).
local function decode(raw)
  if not raw then
    return {f, f, '', f, f, '', f, f, f, f, 0, 0, f, f, f, f, f, f, f, f, f, 0, f, f, 0, 0}
  end
  local v
  local b1, b2, b3 = byte(raw, 1, 3)
  if b1 == ARRAY16 then
    v = {select(2, unpack_limit(raw, b2 * 256 + b3, 3))}
  else
    v = unpack_mp(raw)
  end
  for i = #v + 1, 26 do v[i] = f end
  -- service.lua creates a state with false in the meter's fields
  if not v[O0] then v[O0] = '' end
  if not v[O1] then v[O1] = '' end
  if not v[MT] then v[MT] = 0 end
  if not v[N] then v[N] = 0 end
  if not v[LK] then v[LK] = 0 end
  if not v[LF] then v[LF] = 0 end
  if not v[RP] then v[RP] = 0 end
  return v
end

local function read_states()
  for s = 1, nkeys, CHUNK do
    local got = call('MGET', unpack(keys, s, math.min(s + CHUNK - 1, nkeys)))
    for i = 1, #got do raws[s + i - 1] = got[i] end
  end
end

local function save_states()
  local args, n = {}, 0
  for k = 1, nkeys do
    if dirty[k] then
      args[n + 1] = keys[k]
      args[n + 2] = pack(states[k])
      n = n + 2
    end
  end
  for s = 1, n, 2 * CHUNK do
    call('MSET', unpack(args, s, math.min(s + 2 * CHUNK - 1, n)))
  end
end

local function has(set, rec)
  return find(set, ',' .. rec .. ',', 1, true) ~= nil
end

local function remove(set, rec)
  local s, e = find(set, ',' .. rec .. ',', 1, true)
  if not s then return set end
  local rest = sub(set, 1, s) .. sub(set, e + 1)
  if rest == ',' then return '' end
  return rest
end

local function members(set)
  local list = {}
  for r in string.gmatch(set, '%d+') do list[#list + 1] = tonumber(r) end
  return list
end

-- Advance the watermark over recs held out of order.
local function absorb(w, set)
  while set ~= '' and has(set, w + 1) do
    w = w + 1
    set = remove(set, w)
  end
  return w, set
end

-- Dedup (boot, rec): returns rc, watermark boot, watermark rec.
local function track(k, v, boot, rec)
  local slot
  if v[B0] == boot then
    slot = 0
  elseif v[B1] == boot then
    slot = 1
  elseif not v[B0] or boot > v[B0] then
    v[B1], v[W1], v[O1] = v[B0], v[W0], v[O0]
    v[B0], v[W0], v[O0] = boot, 0, ''
    slot = 0
  elseif not v[B1] or boot > v[B1] then
    v[B1], v[W1], v[O1] = boot, 0, ''
    slot = 1
  else
    return STALE, boot, rec
  end
  local w, set
  if slot == 0 then w, set = v[W0], v[O0] else w, set = v[W1], v[O1] end
  if rec <= w or (set ~= '' and has(set, rec)) then
    return DUPLICATE, boot, w
  end
  if rec == w + 1 then
    if set == '' then w = rec else w, set = absorb(rec, set) end  -- in order: no call
  else
    if set == '' then set = ',' .. rec .. ',' else set = set .. rec .. ',' end
    local held = members(set)
    if #held > ooo_limit then
      -- Give up on the gap: recs below the oldest held one count as lost (their water is
      -- still in every later cumulative counter).
      table.sort(held)
      w, set = absorb(held[1] - 1, set)
    end
  end
  if slot == 0 then v[W0], v[O0] = w, set else v[W1], v[O1] = w, set end
  dirty[k] = true
  return STORED, boot, w
end

-- Meter a cumulative counter reading: returns the delta in ml and the epoch it counted in
-- (-1: none named yet).
local function meter(v, total, epoch)
  if total < 0 then return 0, -1 end
  if epoch < 0 then epoch = v[LE] or -1 end  -- no epoch named (events): the current one
  local delta = 0
  local le = v[LE]
  if not le then
    delta = total  -- the first reading counts from 0
    v[LE], v[LT] = epoch, total
  else
    if le == -1 and epoch >= 0 then le = epoch; v[LE] = le end  -- the first named epoch adopts them
    if epoch == le then
      if total > v[LT] then
        delta = total - v[LT]
        v[LT] = total
      end
    elseif epoch > le then  -- the counter was reset: a new epoch counts from 0
      v[PE], v[PT] = le, v[LT]
      v[LE], v[LT] = epoch, total
      delta = total
    elseif epoch == v[PE] then  -- a late reading of the previous epoch
      if total > v[PT] then
        delta = total - v[PT]
        v[PT] = total
      end
    end  -- an epoch older than the two tracked: its water was counted by later readings
  end
  v[MT] = v[MT] + delta
  return delta, epoch
end

local QUOTA_LOCK = 1
local LOCKED_BIT = 4  -- TELEMETRY key 18 bit 2: the device says it is locked
local svc = {}

-- Tell the node holding the device its desired state (nobody listens when it is offline: it
-- gets the state in AUTH_OK at its next login).
local function push(prefix, did, k, v)
  local node = call('HGET', prefix .. 'p:' .. did, 'node')
  dirty[k] = true
  if node then
    v[RP] = now_ms
    local lock = 0
    if v[LK] ~= 0 then lock = 1 end
    local rm, rx = '-', '-'
    if v[RM] then rm = v[RM] end
    if v[RX] then rx = v[RX] end
    publish_node(ARGV[5], node,
      'state ' .. did .. ' ' .. v[VER] .. ' ' .. lock .. ' ' .. rm .. ' ' .. rx)
  end
end

-- Volume rental: take the delta off the quota; lock at 0, warn at the low-balance threshold.
local function draw(prefix, did, k, v, delta)
  v[RM] = v[RM] - delta
  if v[RM] <= 0 and band(v[LK], QUOTA_LOCK) == 0 then
    v[LK] = bor(v[LK], QUOTA_LOCK)
    v[VER] = (v[VER] or 0) + 1
    svc[#svc + 1] = {did, 'quota_lock', v[VER], v[RM], now_ms}
    push(prefix, did, k, v)
  end
  if v[LO] and v[LF] == 0 and v[RM] <= v[LO] then
    v[LF] = 1
    svc[#svc + 1] = {did, 'low_balance', v[VER] or 0, v[RM], now_ms}
  end
end

-- A device whose reported lock differs from the desired one is sent the desired state again.
local function reconcile(prefix, did, k, v, state_bits)
  if not v[VER] or now_ms - v[RP] < reconcile_ms then return end
  local reported = band(state_bits, LOCKED_BIT) ~= 0
  if reported ~= (v[LK] ~= 0) then push(prefix, did, k, v) end
end

local out, nout = {}, 0
local ledger, nledger = {}, 0

-- The round's devices in the order first seen, then their states in one read.
for g = 1, #groups do
  local prefix, records = groups[g][1], groups[g][2]
  for i = 1, #records do
    local did = records[i][2]
    if not slot_of[did] then
      nkeys = nkeys + 1
      keys[nkeys] = prefix .. 'm:' .. did
      slot_of[did] = nkeys
    end
  end
end
read_states()

for g = 1, #groups do
  local prefix, records = groups[g][1], groups[g][2]
  for i = 1, #records do
    local r = records[i]
    local did, frame_type, boot, rec = r[2], r[3], r[4], r[5]
    local k = slot_of[did]
    local v = states[k]
    if not v then
      v = decode(raws[k])
      states[k] = v
    end
    local rc, wb, wr = track(k, v, boot, rec)
    if rc == STORED then
      local ts, total, kind, encoding, payload, state_bits = r[6], r[7], r[9], r[10], r[11], r[12]
      local delta, epoch = meter(v, total, r[8])
      v[N] = v[N] + 1
      if delta > 0 and v[RM] then draw(prefix, did, k, v, delta) end
      if state_bits >= 0 and frame_type == TELEMETRY and v[VER] then
        reconcile(prefix, did, k, v, state_bits)
      end
      nledger = nledger + 1
      ledger[nledger] = {did, frame_type, boot, rec, ts, delta, total, epoch, kind, encoding, payload}
      if frame_type == TELEMETRY and (not v[TB] or boot > v[TB] or (boot == v[TB] and rec > v[TR])) then
        v[TB], v[TR], v[TS], v[ENC], v[PAYLOAD], v[AT] = boot, rec, ts, encoding, payload, now_ms
      end
    end
    out[nout + 1], out[nout + 2], out[nout + 3] = rc, wb, wr
    nout = nout + 3
  end
end

save_states()

local backlog
if nledger > 0 then
  if #svc > 0 then
    call('XADD', KEYS[1], '*', 'at', now_ms, 'n', nledger, 'records', pack(ledger),
      'svc', pack(svc))
  else
    call('XADD', KEYS[1], '*', 'at', now_ms, 'n', nledger, 'records', pack(ledger))
  end
  backlog = call('INCRBY', KEYS[2], nledger)
else
  backlog = tonumber(call('GET', KEYS[2])) or 0
end
out[nout + 1] = backlog
return pack(out)
