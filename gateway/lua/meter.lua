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
-- Per device, one string key m:<did> holds a msgpack array (one GET and one SET per device
-- per round: far cheaper in Lua than hash fields), false where unknown:
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

-- Publish to a node: on the channel `channels .. node`, or, when `channels` is "" (a Redis
-- Cluster), on the node's sharded channel in this script's slot (gateway/keys.py node_channels).
local function publish_node(channels, node, message)
  if channels == '' then
    local tag = string.match(KEYS[1], '^(.-{%d+}:)')
    return redis.call('SPUBLISH', tag .. 'node:' .. node, message)
  end
  return redis.call('PUBLISH', channels .. node, message)
end

local groups = cmsgpack.unpack(ARGV[1])
local now_ms = tonumber(ARGV[2])
local ooo_limit = tonumber(ARGV[3])
local reconcile_ms = tonumber(ARGV[4])

local STORED, DUPLICATE, STALE = 0, 1, 2
local TELEMETRY = 0x20
local states = {}
local order = {}

-- v[i] or nil: the state's false (unknown) as nil, inline (a call per field cost more).
local function load(prefix, did)
  local key = prefix .. 'm:' .. did
  local raw = redis.call('GET', key)
  local v = {}
  if raw then v = cmsgpack.unpack(raw) end
  local st = {
    key = key, did = did, prefix = prefix, dirty = false,
    b0 = v[1] or nil, w0 = v[2] or nil, o0 = v[3] or '',
    b1 = v[4] or nil, w1 = v[5] or nil, o1 = v[6] or '',
    le = v[7] or nil, lt = v[8] or nil, pe = v[9] or nil, pt = v[10] or nil,
    mt = v[11] or 0, n = v[12] or 0,
    tb = v[13] or nil, tr = v[14] or nil, ts = v[15] or nil, enc = v[16] or nil,
    payload = v[17] or nil, at = v[18] or nil,
    mode = v[19] or nil, rm = v[20] or nil, ver = v[21] or nil, lk = v[22] or 0,
    rx = v[23] or nil, lo = v[24] or nil, lf = v[25] or 0, rp = v[26] or 0,
  }
  states[did] = st
  order[#order + 1] = st
  return st
end

local function save(st)
  local f = false
  redis.call('SET', st.key, cmsgpack.pack({
    st.b0 or f, st.w0 or f, st.o0, st.b1 or f, st.w1 or f, st.o1,
    st.le or f, st.lt or f, st.pe or f, st.pt or f, st.mt, st.n,
    st.tb or f, st.tr or f, st.ts or f, st.enc or f, st.payload or f, st.at or f,
    st.mode or f, st.rm or f, st.ver or f, st.lk, st.rx or f, st.lo or f, st.lf, st.rp,
  }))
end

local function has(set, rec)
  return string.find(set, ',' .. rec .. ',', 1, true) ~= nil
end

local function remove(set, rec)
  local s, e = string.find(set, ',' .. rec .. ',', 1, true)
  if not s then return set end
  local rest = string.sub(set, 1, s) .. string.sub(set, e + 1)
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
local function track(st, boot, rec)
  local slot
  if st.b0 == boot then
    slot = 0
  elseif st.b1 == boot then
    slot = 1
  elseif st.b0 == nil or boot > st.b0 then
    st.b1, st.w1, st.o1 = st.b0, st.w0, st.o0
    st.b0, st.w0, st.o0 = boot, 0, ''
    slot = 0
  elseif st.b1 == nil or boot > st.b1 then
    st.b1, st.w1, st.o1 = boot, 0, ''
    slot = 1
  else
    return STALE, boot, rec
  end
  local w, set
  if slot == 0 then w, set = st.w0, st.o0 else w, set = st.w1, st.o1 end
  if rec <= w or (set ~= '' and has(set, rec)) then
    return DUPLICATE, boot, w
  end
  if rec == w + 1 then
    w, set = absorb(rec, set)
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
  if slot == 0 then st.w0, st.o0 = w, set else st.w1, st.o1 = w, set end
  st.dirty = true
  return STORED, boot, w
end

-- Meter a cumulative counter reading: returns the delta in ml and the epoch it counted in
-- (-1: none named yet).
local function meter(st, total, epoch)
  if total < 0 then return 0, -1 end
  if epoch < 0 then epoch = st.le or -1 end  -- no epoch named (events): the current one
  local delta = 0
  if st.le == nil then
    delta = total  -- the first reading counts from 0
    st.le, st.lt = epoch, total
  else
    if st.le == -1 and epoch >= 0 then st.le = epoch end  -- the first named epoch adopts them
    if epoch == st.le then
      if total > st.lt then
        delta = total - st.lt
        st.lt = total
      end
    elseif epoch > st.le then  -- the counter was reset: a new epoch counts from 0
      st.pe, st.pt = st.le, st.lt
      st.le, st.lt = epoch, total
      delta = total
    elseif epoch == st.pe then  -- a late reading of the previous epoch
      if total > st.pt then
        delta = total - st.pt
        st.pt = total
      end
    end  -- an epoch older than the two tracked: its water was counted by later readings
  end
  st.mt = st.mt + delta
  return delta, epoch
end

local QUOTA_LOCK = 1
local LOCKED_BIT = 4  -- TELEMETRY key 18 bit 2: the device says it is locked
local svc = {}

-- Tell the node holding the device its desired state (nobody listens when it is offline: it
-- gets the state in AUTH_OK at its next login).
local function push(st)
  local node = redis.call('HGET', st.prefix .. 'p:' .. st.did, 'node')
  st.dirty = true
  if node then
    st.rp = now_ms
    local lock = 0
    if st.lk ~= 0 then lock = 1 end
    local rm, rx = '-', '-'
    if st.rm then rm = st.rm end
    if st.rx then rx = st.rx end
    publish_node(ARGV[5], node,
      'state ' .. st.did .. ' ' .. st.ver .. ' ' .. lock .. ' ' .. rm .. ' ' .. rx)
  end
end

-- Volume rental: take the delta off the quota; lock at 0, warn at the low-balance threshold.
local function draw(st, delta)
  st.rm = st.rm - delta
  if st.rm <= 0 and bit.band(st.lk, QUOTA_LOCK) == 0 then
    st.lk = bit.bor(st.lk, QUOTA_LOCK)
    st.ver = (st.ver or 0) + 1
    svc[#svc + 1] = {st.did, 'quota_lock', st.ver, st.rm, now_ms}
    push(st)
  end
  if st.lo and st.lf == 0 and st.rm <= st.lo then
    st.lf = 1
    svc[#svc + 1] = {st.did, 'low_balance', st.ver or 0, st.rm, now_ms}
  end
end

-- A device whose reported lock differs from the desired one is sent the desired state again.
local function reconcile(st, state_bits)
  if st.ver == nil or now_ms - st.rp < reconcile_ms then return end
  local reported = bit.band(state_bits, LOCKED_BIT) ~= 0
  if reported ~= (st.lk ~= 0) then push(st) end
end

local out = {}
local ledger = {}

for g = 1, #groups do
  local prefix, records = groups[g][1], groups[g][2]
  for i = 1, #records do
    local r = records[i]
    local did, frame_type, boot, rec = r[1], r[2], r[3], r[4]
    local st = states[did] or load(prefix, did)
    local rc, wb, wr = track(st, boot, rec)
    if rc == STORED then
      local delta, epoch = meter(st, r[6], r[7])
      st.n = st.n + 1
      if delta > 0 and st.rm then draw(st, delta) end
      if r[11] >= 0 and frame_type == TELEMETRY then reconcile(st, r[11]) end
      ledger[#ledger + 1] = {did, frame_type, boot, rec, r[5], delta, r[6], epoch, r[8], r[9], r[10]}
      if frame_type == TELEMETRY and (st.tb == nil or boot > st.tb or (boot == st.tb and rec > st.tr)) then
        st.tb, st.tr, st.ts, st.enc, st.payload, st.at = boot, rec, r[5], r[9], r[10], now_ms
      end
    end
    out[#out + 1] = rc
    out[#out + 1] = wb
    out[#out + 1] = wr
  end
end

for _, st in ipairs(order) do
  if st.dirty then save(st) end
end

local backlog
if #ledger > 0 then
  if #svc > 0 then
    redis.call('XADD', KEYS[1], '*', 'at', now_ms, 'n', #ledger, 'records', cmsgpack.pack(ledger),
      'svc', cmsgpack.pack(svc))
  else
    redis.call('XADD', KEYS[1], '*', 'at', now_ms, 'n', #ledger, 'records', cmsgpack.pack(ledger))
  end
  backlog = redis.call('INCRBY', KEYS[2], #ledger)
else
  backlog = tonumber(redis.call('GET', KEYS[2])) or 0
end
out[#out + 1] = backlog
return cmsgpack.pack(out)
