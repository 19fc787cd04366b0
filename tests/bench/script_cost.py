"""Redis CPU per item of the `claim` and `finish` scripts alone, for comparing script versions.

    .venv-bench/bin/python tests/bench/script_cost.py [LUA_DIR]

Registers 20,000 items of a batch under a prefix of its own (`register.lua`), claims them in
groups of G (env, default 16) from one client, one group at a time, then records their
outcomes in groups of G, and reads Redis's CPU time from /proc around each phase: the scripts'
cost without the fleet's noise. Everything it wrote is deleted.
`git show <rev>:shared/src/lua/<f>.lua` into a folder gives an older version to compare.
"""
import os
import sys
import time
import uuid

import redis

lua = sys.argv[1] if len(sys.argv) > 1 else "shared/src/lua"
N, G = 20000, int(os.environ.get("G", "16"))
r = redis.Redis()
pid = int(r.info("server")["process_id"])


def cpu():
    f = open(f"/proc/{pid}/stat").read().split(")")[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def script(name):
    prelude = open(f"{lua}/prelude.lua").read()
    return r.register_script(prelude + "\n" + open(f"{lua}/{name}.lua").read())


bid = f"bjb-{uuid.uuid4()}"
prefix = f"scriptcost{uuid.uuid4().hex[:8]}"
base, events = f"{prefix}:batch:{{{bid}}}", f"{prefix}:events"
now = "2026-12-01T00:00:00.000Z"
try:
    r.hset(base, mapping={"id": bid, "job_type": "parse", "status": "dispatched",
                          "processed": 0, "failed": 0, "skipped": 0, "registered": 0,
                          "expanded": "1", "total": N})
    register, claim, finish = script("register"), script("claim"), script("finish")
    ids = [f"dfl-{uuid.uuid4()}" for _ in range(N)]
    for i in range(0, N, 25):
        args = [base, now, bid]
        for j in range(i, min(N, i + 25)):
            args += [ids[j], j, ""]
        register(keys=[base, events], args=args)
    record = '{"id":"x","storage_key":"projects/p/files/x","display_name":"a.txt","size_bytes":11}'
    for i in range(N):
        r.set(f"{prefix}:dfile:{ids[i]}", record)
    result = ('{"pages":1,"output":{"pages":[{"page":1,'
              '"text":"hello world","md":"hello world"}]}}')
    groups = [ids[i:i + G] for i in range(0, N, G)]
    figures = []
    for name, run in [
        ("claim", lambda g: claim(keys=[base, events] + [f"{prefix}:dfile:{i}" for i in g],
                                  args=[base, now, bid] + g)),
        ("finish", lambda g: finish(keys=[base, events],
                                    args=[base, now, bid] + [a for i in g for a in
                                                             (i, "completed", "", "", result, "1")])),
    ]:
        c0, t0 = cpu(), time.time()
        for g in groups:
            run(g)
        c1, t1 = cpu(), time.time()
        figures.append(f"{name} {1e6 * (c1 - c0) / N:.1f} µs")
    processed, status = r.hmget(base, "processed", "status")
    print(f"G={G}: Redis CPU per item: {', '.join(figures)}; "
          f"batch processed {processed.decode()}, {status.decode()}")
finally:
    for k in r.scan_iter(f"{prefix}:*", count=1000):
        r.delete(k)
