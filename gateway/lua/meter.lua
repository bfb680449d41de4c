-- Deduplicate, meter and ledger one shard's batch of device records, atomically.
--
-- KEYS[1] the shard's ledger stream, KEYS[2] the shard's ledger backlog counter
-- ARGV[1] the shard's key prefix ("aq:{07}:")
-- ARGV[2] msgpack array of records, each
--         {did, frame_type, boot, rec, ts, flow_total (-1: none), cnt_epoch (-1: none),
--          event_kind, encoding, payload}
-- ARGV[3] received-at, unix milliseconds
-- ARGV[4] most out-of-order records remembered per boot
-- Returns msgpack {rc1, wm_boot1, wm_rec1, rc2, ..., backlog}: rc 0 stored, 1 duplicate,
-- 2 stale; (wm_boot, wm_rec) is the record's boot and the highest rec stored with no gap below.
--
-- Per device hash m:<did>: b0/w0/o0 and b1/w1/o1 the newest two boots with their watermark and
-- out-of-order recs (",r1,r2,"); le/lt the current counter epoch and its highest reading, pe/pt
-- the previous epoch's (le = -1: readings seen before any epoch was named); mt the metered
-- total; n records stored; tb/tr the newest telemetry's position.
--
-- The metering rule: the water of a device is, over its counter epochs, the sum of the highest
-- reading seen in each epoch (a counter counts from 0 in its epoch). It does not depend on the
-- order readings arrive in, so resends, reordering and late records never count twice.

local prefix = ARGV[1]
local records = cmsgpack.unpack(ARGV[2])
local now_ms = tonumber(ARGV[3])
local ooo_limit = tonumber(ARGV[4])

local STORED, DUPLICATE, STALE = 0, 1, 2
local TELEMETRY = 0x20
local FIELDS = {'b0', 'w0', 'o0', 'b1', 'w1', 'o1', 'le', 'lt', 'pe', 'pt', 'mt', 'n', 'tb', 'tr'}

local states = {}
local order = {}

local function load(did)
  local key = prefix .. 'm:' .. did
  local v = redis.call('HMGET', key, unpack(FIELDS))
  local st = {
    key = key, did = did, dirty = false,
    b0 = tonumber(v[1]), w0 = tonumber(v[2]), o0 = v[3] or '',
    b1 = tonumber(v[4]), w1 = tonumber(v[5]), o1 = v[6] or '',
    le = tonumber(v[7]), lt = tonumber(v[8]), pe = tonumber(v[9]), pt = tonumber(v[10]),
    mt = tonumber(v[11]) or 0, n = tonumber(v[12]) or 0,
    tb = tonumber(v[13]), tr = tonumber(v[14]),
  }
  states[did] = st
  order[#order + 1] = st
  return st
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
  if rec <= w or has(set, rec) then
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

local out = {}
local ledger = {}
local latest = {}

for i = 1, #records do
  local r = records[i]
  local did, frame_type, boot, rec = r[1], r[2], r[3], r[4]
  local st = states[did] or load(did)
  local rc, wb, wr = track(st, boot, rec)
  if rc == STORED then
    local delta, epoch = meter(st, r[6], r[7])
    st.n = st.n + 1
    ledger[#ledger + 1] = {did, frame_type, boot, rec, r[5], delta, r[6], epoch, r[8], r[9], r[10]}
    if frame_type == TELEMETRY and (st.tb == nil or boot > st.tb or (boot == st.tb and rec > st.tr)) then
      st.tb, st.tr = boot, rec
      latest[did] = r
    end
  end
  out[#out + 1] = rc
  out[#out + 1] = wb
  out[#out + 1] = wr
end

for _, st in ipairs(order) do
  if st.dirty then
    local args = {'w0', st.w0, 'o0', st.o0, 'b0', st.b0, 'mt', st.mt, 'n', st.n}
    if st.b1 ~= nil then
      args[#args + 1] = 'b1'; args[#args + 1] = st.b1
      args[#args + 1] = 'w1'; args[#args + 1] = st.w1
      args[#args + 1] = 'o1'; args[#args + 1] = st.o1
    end
    if st.le ~= nil then
      args[#args + 1] = 'le'; args[#args + 1] = st.le
      args[#args + 1] = 'lt'; args[#args + 1] = st.lt
    end
    if st.pe ~= nil then
      args[#args + 1] = 'pe'; args[#args + 1] = st.pe
      args[#args + 1] = 'pt'; args[#args + 1] = st.pt
    end
    if st.tb ~= nil then
      args[#args + 1] = 'tb'; args[#args + 1] = st.tb
      args[#args + 1] = 'tr'; args[#args + 1] = st.tr
    end
    redis.call('HSET', st.key, unpack(args))
  end
end

for did, r in pairs(latest) do
  redis.call('HSET', prefix .. 't:' .. did,
    'boot', r[3], 'rec', r[4], 'ts', r[5], 'enc', r[9], 'payload', r[10], 'at', now_ms)
end

local backlog
if #ledger > 0 then
  redis.call('XADD', KEYS[1], '*', 'at', now_ms, 'n', #ledger, 'records', cmsgpack.pack(ledger))
  backlog = redis.call('INCRBY', KEYS[2], #ledger)
else
  backlog = tonumber(redis.call('GET', KEYS[2])) or 0
end
out[#out + 1] = backlog
return cmsgpack.pack(out)
