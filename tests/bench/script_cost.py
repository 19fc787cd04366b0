"""Redis CPU per item of the `finish` script alone, for comparing script versions.

    .venv-bench/bin/python tests/bench/script_cost.py [LUA_DIR] [finish|prelude|empty]

Registers 20,000 items of a lean batch under a prefix of its own (`register.lua`), then sends
their direct outcomes in groups of G (env, default 8) from one client, one at a time, and
reads Redis's CPU time from /proc before and after: the script's cost without the fleet's
noise. `prelude` runs the shared prelude only and `empty` a bare `return 1`, with the same
arguments: what is left is the script's own work. Everything it wrote is deleted.
`git show <rev>:shared/src/lua/<f>.lua` into a folder gives an older version to compare.
"""
import os
import sys
import time
import uuid

import redis

lua = sys.argv[1] if len(sys.argv) > 1 else "shared/src/lua"
variant = sys.argv[2] if len(sys.argv) > 2 else "finish"
N, G = 20000, int(os.environ.get("G", "8"))
r = redis.Redis()
pid = int(r.info("server")["process_id"])


def cpu():
    f = open(f"/proc/{pid}/stat").read().split(")")[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


prelude = open(f"{lua}/prelude.lua").read()
bid = f"bjb-{uuid.uuid4()}"
prefix = f"scriptcost{uuid.uuid4().hex[:8]}"
base, events = f"{prefix}:batch:{{{bid}}}", f"{prefix}:events"
now = "2026-12-01T00:00:00.000Z"
try:
    r.hset(base, mapping={"id": bid, "job_type": "parse", "status": "dispatched",
                          "processed": 0, "failed": 0, "skipped": 0, "registered": 0,
                          "expanded": "1", "total": N, "lean": "1"})
    register = r.register_script(prelude + "\n" + open(f"{lua}/register.lua").read())
    ids = [f"dfl-{uuid.uuid4()}" for _ in range(N)]
    for i in range(0, N, 25):
        args = [base, now, bid]
        for j in range(i, min(N, i + 25)):
            args += [ids[j], j, ""]
        register(keys=[base, events], args=args)
    body = {"finish": open(f"{lua}/finish.lua").read(), "prelude": "return 1"}.get(variant)
    script = r.register_script("return 1" if body is None else prelude + "\n" + body)
    result = ('{"completed_at":"' + now + '","pages":1,"output":{"pages":[{"page":1,'
              '"text":"hello world","md":"hello world"}]}}')
    groups = []
    for i in range(0, N, G):
        args = [base, now, bid]
        for j in range(i, min(N, i + G)):
            args += [ids[j], "completed", "", "", result, "1", f"pjb-{bid[4:]}.{j:x}"]
        groups.append(args)
    c0, t0 = cpu(), time.time()
    for args in groups:
        script(keys=[base, events], args=args)
    c1, t1 = cpu(), time.time()
    processed, status = r.hmget(base, "processed", "status")
    print(f"{variant} G={G}: Redis {1e6 * (c1 - c0) / N:.1f} µs CPU per item, "
          f"{N / (t1 - t0):.0f} items/s; batch processed {processed.decode()}, {status.decode()}")
finally:
    for k in r.scan_iter(f"{prefix}:*", count=1000):
        r.delete(k)
