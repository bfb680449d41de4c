"""What a device state's read and write cost meter.lua in two stored formats: the msgpack array
it uses (`cmsgpack.unpack` into a table, `cmsgpack.pack` back) and fixed binary fields read and
written with Redis' Lua `struct` library (the values as locals, no table). A design not adopted
(docs/benchmarks.md, session 13): at window 1 every record is its device's only one in its
round, so each record pays one read and one write of its device's 26-field state.

The state is a typical one (two boots, a counter epoch, a volume-rental quota, the newest
telemetry with a 40-byte payload); each iteration reads it, changes three counters and writes
it, timed inside the script (Redis' TIME) on a private `redis-server`.

    python benchmarks/meter_state_format.py --iterations 200000
"""

from __future__ import annotations

import argparse

import redis
from private_redis import private_redis  # benchmarks/private_redis.py, beside this file

# The fields of meter.lua's state (its header comment), in order; false where unset.
_STATE = """
local st = {7, 1234567, ',', 6, 999, false, 3, 1234567, 2, 99999, 123456789, 54321, 7, 1234567,
  1790000000, 1, string.rep('x', 40), 1790000000123, 2, false, 5, 0, 0, 200, false, 1790000000123}
local N = tonumber(ARGV[1])
"""
_TIMED = """
local t0 = redis.call('TIME')
{loop}
local t1 = redis.call('TIME')
return {{(t1[1] - t0[1]) * 1000000 + (t1[2] - t0[2]), #blob}}
"""
MSGPACK = (
    _STATE
    + "local blob = cmsgpack.pack(st)\n"
    + _TIMED.format(
        loop="""
for i = 1, N do
  local s = cmsgpack.unpack(blob)
  s[2] = s[2] + 1; s[11] = s[11] + 10; s[12] = s[12] + 1
  blob = cmsgpack.pack(s)
end"""
    )
)
# Integers as 8 bytes, the out-of-order lists and the payload length-prefixed (c0); false as
# -1 (the quota) or an empty list.
_FORMAT = "'>i8i8i2c0i8i8i2c0i8i8i8i8i8i8i8i8i8i8i2c0i8i8i8i8i8i8i8i8i8'"
STRUCT = (
    _STATE
    + f"local F = {_FORMAT}\n"
    + "local blob = struct.pack(F, st[1], st[2], #st[3], st[3], st[4], st[5], 0, '', st[7], "
    "st[8], st[9], st[10], st[11], st[12], st[13], st[14], st[15], st[16], #st[17], st[17], "
    "st[18], st[19], -1, st[21], st[22], st[23], st[24], -1, st[26])\n"
    + _TIMED.format(
        loop="""
for i = 1, N do
  local b0, w0, o0, b1, w1, o1, le, lt, pe, pt, mt, n, tb, tr, ts, enc, pl, at, mode, rm, ver,
    lk, rx, lo, lf, rp = struct.unpack(F, blob)
  w0 = w0 + 1; mt = mt + 10; n = n + 1
  blob = struct.pack(F, b0, w0, #o0, o0, b1, w1, #o1, o1, le, lt, pe, pt, mt, n, tb, tr, ts,
    enc, #pl, pl, at, mode, rm, ver, lk, rx, lo, lf, rp)
end"""
    )
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=2, help="each format, alternately")
    args = parser.parse_args()
    with private_redis("meter-state-") as (sock, _pid):
        client = redis.Redis(unix_socket_path=sock)
        for _ in range(args.repeat):
            for name, script in (("msgpack", MSGPACK), ("struct", STRUCT)):
                us, size = client.eval(script, 0, args.iterations)
                print(
                    f"{name}: {us / args.iterations:.3f} us a read and write of the state "
                    f"({size} bytes)"
                )


if __name__ == "__main__":
    main()
