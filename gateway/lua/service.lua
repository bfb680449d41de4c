-- Change one device's service state (the desired state) atomically, next to its meter state.
--
-- KEYS[1] meter state m:<did> (meter.lua's packed array; fields 19-26 are the service state)
-- KEYS[2] presence hash p:<did> (which node to tell)
-- KEYS[3], KEYS[4], KEYS[5] the shard's rental schedules (expiry, remind, grace): sorted sets
--         did -> rental_expires_at, kept here in the same atomic step as the state
-- KEYS[6] optional: request marker r:<did>:<request id> (a retried request is applied once)
-- KEYS[7] handback only, optional: the marker of the exchange's lock of this device;
--         the changes of models/service.py, optional: the device's unrecorded changes
--         sa:<did> (a hash: request marker key -> the change's record, below), given when the
--         database holds a pending row for the request id: the step writes the change's
--         record there too, with no expiry, and models/service.py deletes it once the row is
--         complete, so whether the change ran stays known after the marker expires
-- KEYS[8] with KEYS[7] of a change of models/service.py: the shard's index of unrecorded
--         records (a sorted set: request marker key -> now, unix ms), so the recovery pass
--         finds a record whose row rolled back with its caller's transaction
-- ARGV[1] op, ARGV[2] now (unix ms), ARGV[3] node channel prefix ("aq:node:"), ARGV[4] did,
-- ARGV[5..] the op's arguments ("-" = none):
--   configure  mode remaining_ml rental_expires_at low_balance_ml
--   topup      ml
--   set_expiry rental_expires_at
--   extend     seconds (from the later of now and the current expiry)
--   expire     (the scheduler: lock when rental_expires_at has passed)
--   lock / unlock  (a person's lock, bit 4)
--   handover   recipient (an exchange: the quota left goes to the replacement device, the did
--              `recipient`; it drops to 0 here in the same step that reads it, so no water
--              poured meanwhile is lost or counted twice; needs a request id, whose marker
--              keeps "amount|recipient" for a retry: a retry naming another recipient is
--              refused, so one hand-over never configures two devices). ARGV[6]
--              'recorded': the database says this hand-over began longer ago than its
--              marker lives (models/ticket_work.py): with no marker it answers -4 and
--              changes nothing (a second hand-over would move the quota twice)
--   handback  phase ml (a cancelled exchange gives the quota back to the old device, with
--              the hand-over's request id; KEYS[7] optional: the exchange's lock marker, whose
--              person's lock is lifted when that lock set it). `begin` marks the hand-over
--              "given back": from then on a retry of the hand-over is refused (-3), so the
--              quota cannot go out again; `credit` adds `ml` (what the recipient gave back)
--              once. Both answer the recipient; `begin` with no hand-over answers 0, or
--              -4 when ARGV[7] is 'recorded' (as for handover: the marker expired, what
--              was handed over and where is no longer known here). Both keep the
--              marker's TTL (KEEPTTL): it never outlives the configure marker that the
--              recipient's take-back reads, so a take-back never mistakes an expired
--              configure for one that never landed.
--   takeback  ml (the recipient's side of a hand-back, with the exchange's request id and
--              `ml` the amount handed over: when its configure landed, what is left of that
--              amount comes off it and goes back (quota_back: the amount less the water
--              metered since the configure, never below 0, never more than it holds; a debt
--              as it was handed over) and what others added stays on it; of the rental
--              expiry the configure gave, the part still to run comes off (rental_kept: what
--              others gave beyond that expiry, a paid extend say, stays; an expiry at or
--              before it is cleared, locked as expired). A configure marker without the
--              metered total (written before it was kept): all it holds goes back (0, locked,
--              its expiry cleared), as before. When the configure never landed, `ml` goes
--              back and a late configure with that id does nothing)
--   read
-- Returns {applied (1 changed, 0 nothing to do, -1 request already applied, -2 refused,
--          -3 handed back, -4 marker expired), version, lock bits, mode, remaining_ml, rental_expires_at,
--          low_balance_ml} (false where unset); -1 of another op than the exchange's
--          appends the first change's record from the marker (false: a marker without one);
--          handover appends the ml handed over (false:
--          no quota), and when refused (another recipient, or handed back) the did that
--          received it; handback the ml (the hand-over's at `begin`, the credit's after) and
--          the recipient; takeback the ml that goes back.
-- Markers: a change's "1" ("0": it changed nothing); a configure's "configured|mt|rx" (the
-- metered total and the rental expiry ('-': none) it set, for a take-back; "1" before they
-- were kept); a hand-over's "amount|recipient", then "amount|recipient|back" once its
-- hand-back began, "amount|recipient|back:ml" once credited; a take-back's "taken|ml".
-- Every change but the exchange's handover, handback and takeback appends '#' and its record
-- for the database: "op|args|version,lock bits,mode,remaining_ml,rental_expires_at,low"
-- (the state right after it, '-' where unset), so models/service.py can record the change
-- as it was applied when its process died before the database's row, and refuse another
-- change under the id (docs/metering.md, "A change's request id"). With KEYS[7] (the
-- database holds the change's row pending) the same record goes into the device's unrecorded
-- hash too, with no expiry: when the marker has expired, a change found there was applied
-- (-1 with its record), so a late retry never applies it twice.
-- Lock bits: 1 quota exhausted, 2 rental expired, 4 locked by a person. The device is locked
-- when any bit is set.

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
local request = KEYS[6]
local now_ms = tonumber(ARGV[2])
local now_s = math.floor(now_ms / 1000)
local QUOTA, EXPIRED, MANUAL = 1, 2, 4
local f = false

local function known(x)
  if x == false then return nil end
  return x
end

local function num(x)
  if x == nil or x == '-' then return nil end
  return tonumber(x)
end

local raw = redis.call('GET', KEYS[1])
local v = {}
if raw then v = cmsgpack.unpack(raw) end
for i = #v + 1, 26 do v[i] = f end
local mode, rm, ver, lk = known(v[19]), known(v[20]), known(v[21]) or 0, known(v[22]) or 0
local rx, lo, lf = known(v[23]), known(v[24]), known(v[25]) or 0

local given = nil  -- handover, handback, takeback: the ml moved (nil: none of them)
local holder = nil  -- handback: the device the hand-over went to

local function answer(applied)
  local state = {applied, ver, lk, mode or f, rm or f, rx or f, lo or f, given}
  if holder then state[8], state[9] = given or f, holder end
  return state
end

-- A hand-over's marker: amount, recipient, and what its hand-back did ('' none yet, 'back',
-- 'back:ml'); a marker written before recipients were kept holds the amount only.
local function handed(seen)
  local amount, to, back = string.match(seen, '^([^|]*)|([^|]*)|?(.*)$')
  if amount == nil then return seen, nil, '' end
  return amount, to, back
end

-- A take-back: what goes back of the `amount` handed over to a device that holds `holds` now
-- and metered `metered` ml since the exchange configured it. Water poured comes off the
-- amount first; what the device holds beyond it (a top-up, a new quota) stays there. A debt
-- goes back as it was handed over, or deeper when the device holds less (it poured while in
-- debt and nobody paid for that water).
local function quota_back(amount, metered, holds)
  if holds == nil then return nil end
  local back = amount
  if amount > 0 then back = amount - metered end
  if back > holds then back = holds end
  if amount >= 0 and back < 0 then back = 0 end
  return back
end

-- A take-back's rental: what the new device keeps of expiry `rx` when the exchange set it to
-- `set_rx` (nil: it set none). The exchange's period still to run at now comes off; what
-- others gave beyond the exchange's expiry (an extend paid, a later set_expiry or configure)
-- stays: `rx` less the part of the exchange's period not run yet (when the exchange's expiry
-- has passed, nothing is left of it and `rx` stays as it is). An expiry at or before the
-- exchange's holds nothing but (part of) its period: cleared (nil).
local function rental_kept(set_rx, rx)
  if set_rx == nil or rx == nil then return rx end
  if rx <= set_rx then return nil end
  if set_rx > now_s then return rx - (set_rx - now_s) end
  return rx
end

-- A request marker's value: the step's own part (below), then, for the changes of
-- models/service.py, '#' and the change's record for the database (`record` below); a marker
-- written before records were kept has none.
local function own_part(value)
  if not value then return value end
  return string.match(value, '^([^#]*)')
end

local function record_of(value)
  if not value then return f end
  return string.match(value, '^[^#]*#(.*)$') or f
end

if op == 'read' then return answer(0) end
-- KEYS[7] of a change of models/service.py (not of the exchange's steps): its unrecorded hash
local unrecorded = nil
if request and op ~= 'handover' and op ~= 'handback' and op ~= 'takeback' then
  unrecorded = KEYS[7]
end
local seen_value = false
if request then seen_value = redis.call('GET', request) end
if not seen_value and unrecorded then  -- the marker expired; the unrecorded hash outlives it
  local kept = redis.call('HGET', unrecorded, request)
  if kept then seen_value = '1#' .. kept end
end
local seen = own_part(seen_value)
-- The database recorded this exchange's hand-over longer ago than markers live: without its
-- marker the step cannot be told apart from one never done, so nothing is changed (-4).
local recorded = (op == 'handover' and ARGV[6] == 'recorded')
  or (op == 'handback' and ARGV[7] == 'recorded')
if recorded and not seen then return answer(-4) end
if seen and op ~= 'handback' and op ~= 'takeback' then
  if op ~= 'handover' then
    local again = answer(-1)
    again[8] = record_of(seen_value)  -- what the first change did, for its database row
    return again
  end
  local amount, to, back = handed(seen)
  given = tonumber(amount) or f  -- '-': there was no quota
  if to ~= nil and (to ~= ARGV[5] or back ~= '') then
    -- another recipient (-2), or the ticket's cancel is giving it back (-3): never again
    local refused = answer(-2)
    if back ~= '' then refused = answer(-3) end
    refused[8], refused[9] = given, to
    return refused
  end
  return answer(-1)
end
local marker = 1

local function set_bit(bits, b, on)
  if on then return bit.bor(bits, b) end
  return bit.band(bits, bit.bnot(b))
end

local before_lk, before_rm, before_rx, before_mode, before_lo = lk, rm, rx, mode, lo

if op == 'configure' then
  mode, rm, rx, lo = num(ARGV[5]), num(ARGV[6]), num(ARGV[7]), num(ARGV[8])
  -- For a take-back with this request id: the water metered so far, the expiry given here
  marker = 'configured|' .. string.format('%d', known(v[11]) or 0) .. '|' .. (ARGV[7] or '-')
  lf = 0
  if rm and lo and rm <= lo then lf = 1 end
  lk = set_bit(lk, QUOTA, rm ~= nil and rm <= 0)
  lk = set_bit(lk, EXPIRED, rx ~= nil and rx <= now_s)
elseif op == 'topup' then
  if rm == nil then return answer(-2) end  -- not metered against a quota
  rm = rm + num(ARGV[5])
  if rm > 0 then lk = set_bit(lk, QUOTA, false) end
  if lo and rm > lo then lf = 0 end
elseif op == 'set_expiry' then
  rx = num(ARGV[5])
  lk = set_bit(lk, EXPIRED, rx ~= nil and rx <= now_s)
elseif op == 'extend' then
  local from = rx or now_s
  if from < now_s then from = now_s end
  rx = from + num(ARGV[5])
  lk = set_bit(lk, EXPIRED, false)
elseif op == 'expire' then
  if rx == nil or rx > now_s or bit.band(lk, EXPIRED) ~= 0 then return answer(0) end
  lk = set_bit(lk, EXPIRED, true)
elseif op == 'handover' then
  if not request then return redis.error_reply('handover needs a request id') end
  if ARGV[5] == nil or ARGV[5] == '' or ARGV[5] == '-' then
    return redis.error_reply('handover needs a recipient')
  end
  given = rm or f
  marker = (rm or '-') .. '|' .. ARGV[5]
  if rm then
    rm = 0
    lk = set_bit(lk, QUOTA, true)
  end
elseif op == 'handback' then
  if not request then return redis.error_reply('handback needs a request id') end
  if not seen then return answer(0) end  -- nothing was handed over
  local amount, to, back = handed(seen)
  if to == nil then return answer(-2) end  -- a marker that does not say where it went
  holder = to
  local credited = string.match(back, '^back:(.*)$')
  if credited then
    given = tonumber(credited) or f
    return answer(-1)
  end
  given = tonumber(amount) or f
  if ARGV[5] == 'begin' then
    if back == 'back' then return answer(-1) end
    redis.call('SET', request, amount .. '|' .. to .. '|back', 'KEEPTTL')
    return answer(1)
  end
  if ARGV[5] ~= 'credit' then return redis.error_reply('handback phase begin or credit') end
  if back ~= 'back' then return redis.error_reply('handback credit before its begin') end
  local ml = num(ARGV[6])
  given = ml or f
  if ml then
    rm = (rm or 0) + ml
    lk = set_bit(lk, QUOTA, rm <= 0)
    if lo and rm > lo then lf = 0 end
  end
  if KEYS[7] and own_part(redis.call('GET', KEYS[7])) == '1' then
    lk = set_bit(lk, MANUAL, false)
  end
  marker = amount .. '|' .. to .. '|back:' .. (ml or '-')
elseif op == 'takeback' then
  if not request then return redis.error_reply('takeback needs a request id') end
  local taken = seen and string.match(seen, '^taken|(.*)$')
  if taken then
    given = tonumber(taken) or f
    return answer(-1)
  end
  local at_mt, set_rx = nil, nil
  if seen then at_mt, set_rx = string.match(seen, '^configured|(%d+)|(.*)$') end
  if at_mt then  -- the exchange's configure landed: what is left of what it gave goes back
    local amount = num(ARGV[5])
    local back = nil
    if amount then
      local metered = (known(v[11]) or 0) - tonumber(at_mt)
      if metered < 0 then metered = 0 end  -- the meter state was lost since: none known
      back = quota_back(amount, metered, rm)
    end
    given = back or f
    marker = 'taken|' .. (back or '-')
    if back then
      rm = rm - back
      lk = set_bit(lk, QUOTA, rm <= 0)
      if lo and rm > lo then lf = 0 end
    end
    local kept = rental_kept(num(set_rx), rx)
    if kept ~= rx then  -- the exchange's period goes, what others gave beyond it stays
      rx = kept
      lk = set_bit(lk, EXPIRED, rx == nil or rx <= now_s)
    end
  elseif seen then  -- a configure marker from before: all it holds goes back, as it did then
    given = rm or f
    marker = 'taken|' .. (rm or '-')
    if rm then
      rm = 0
      lk = set_bit(lk, QUOTA, true)
    end
    if rx then
      rx = nil
      lk = set_bit(lk, EXPIRED, true)
    end
  else  -- never configured: the amount handed over goes back, and that configure never lands
    given = num(ARGV[5]) or f
    marker = 'taken|' .. (ARGV[5] or '-')
  end
elseif op == 'lock' then
  lk = set_bit(lk, MANUAL, true)
elseif op == 'unlock' then
  lk = set_bit(lk, MANUAL, false)
else
  return redis.error_reply('unknown service op ' .. op)
end

local function int_or_dash(x)
  if x == nil then return '-' end
  return string.format('%d', x)
end

-- The record a change's marker keeps for the database (models/service.py): the op, its
-- arguments as asked (ARGV[5..]) and the state right after it, so a retry after a crash
-- between this step and the database's row records what was done, and a retry asking
-- another change under the id is refused: "op|arg,..|version,locks,mode,remaining,expiry,low".
local function record()
  local args = {}
  for i = 5, #ARGV do args[#args + 1] = ARGV[i] end
  local after = {int_or_dash(ver), int_or_dash(lk), int_or_dash(mode), int_or_dash(rm),
    int_or_dash(rx), int_or_dash(lo)}
  return op .. '|' .. table.concat(args, ',') .. '|' .. table.concat(after, ',')
end

-- A hand-back keeps the hand-over marker's TTL (see handback above); others set a week. The
-- exchange's own steps keep their markers as they were; the others append their record.
local function mark(value)
  if op ~= 'handover' and op ~= 'handback' and op ~= 'takeback' then
    value = value .. '#' .. record()
  end
  if op == 'handback' and redis.call('TTL', request) > 0 then
    redis.call('SET', request, value, 'KEEPTTL')
  else
    redis.call('SET', request, value, 'EX', 604800)
  end
  if unrecorded then
    redis.call('HSET', unrecorded, request, record())
    if KEYS[8] then redis.call('ZADD', KEYS[8], now_ms, request) end
  end
end

if lk == before_lk and rm == before_rm and rx == before_rx and mode == before_mode
    and lo == before_lo and op ~= 'configure' then
  if marker == 1 then marker = 0 end  -- applied, changed nothing (an exchange's lock: not its)
  if request then mark(marker) end
  return answer(0)
end

ver = ver + 1
local node = redis.call('HGET', KEYS[2], 'node')
v[19], v[20], v[21], v[22] = mode or f, rm or f, ver, lk
v[23], v[24], v[25] = rx or f, lo or f, lf
if node then v[26] = now_ms end  -- when the state was last pushed (rate-limits re-sends)
redis.call('SET', KEYS[1], cmsgpack.pack(v))
if request then mark(marker) end
if rx ~= before_rx or op == 'configure' then  -- a new expiry: schedule its lock, reminder, grace
  for i = 3, 5 do
    if rx then redis.call('ZADD', KEYS[i], rx, ARGV[4]) else redis.call('ZREM', KEYS[i], ARGV[4]) end
  end
end

if node then
  local lock = 0
  if lk ~= 0 then lock = 1 end
  local srm, srx = '-', '-'
  if rm then srm = rm end
  if rx then srx = rx end
  publish_node(ARGV[3], node,
    'state ' .. ARGV[4] .. ' ' .. ver .. ' ' .. lock .. ' ' .. srm .. ' ' .. srx)
end
return answer(1)
