"""Runs N tasks through Celery or Dramatiq with the worker started first (the "live" shape),
and prints one JSON line: {"system", "items", "seconds", "items_per_s"}.

    python run_python_queue.py celery|dramatiq N
"""
import json
import os
import pathlib
import subprocess
import sys
import time
import uuid

import redis

system, n = sys.argv[1], int(sys.argv[2])
here = pathlib.Path(__file__).parent
queue = f"docfleet-bench-{system}-{uuid.uuid4().hex[:8]}"
env = dict(os.environ, BENCH_QUEUE=queue, PYTHONPATH=str(here))
bin_dir = pathlib.Path(sys.executable).parent
r = redis.Redis()
r.delete(f"{queue}:done")
if system == "celery":
    worker = subprocess.Popen([str(bin_dir / "celery"), "-A", "celery_app", "worker", "--concurrency", "2",
                               "--pool", "prefork", "-Q", queue, "--loglevel", "WARNING"], env=env, cwd=here,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
else:
    worker = subprocess.Popen([str(bin_dir / "dramatiq"), "dramatiq_app", "--processes", "2", "--threads", "8"],
                              env=env, cwd=here, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
time.sleep(6)  # let the worker boot and attach
sys.path.insert(0, str(here))
os.environ["BENCH_QUEUE"] = queue
t0 = time.time()
if system == "celery":
    from celery_app import work
    for i in range(n):
        work.apply_async((i,))
else:
    from dramatiq_app import work
    for i in range(n):
        work.send(i)
deadline = t0 + 600
while int(r.get(f"{queue}:done") or 0) < n and time.time() < deadline:
    time.sleep(0.05)
secs = time.time() - t0
done = int(r.get(f"{queue}:done") or 0)
worker.terminate()
try:
    worker.wait(timeout=30)
except subprocess.TimeoutExpired:
    worker.kill()
r.delete(f"{queue}:done")
subprocess.run(["rabbitmqctl", "delete_queue", queue], capture_output=True)
if system == "dramatiq":
    for q in (f"{queue}.DQ", f"{queue}.XQ"):
        subprocess.run(["rabbitmqctl", "delete_queue", q], capture_output=True)
else:
    # Celery declares an exchange named after the queue, and its workers the shared `celeryev`
    # and pidbox ones: ours goes, the shared ones only if nothing else is bound to them.
    from kombu import Connection
    shared = ("celeryev", "celery.pidbox", "reply.celery.pidbox")
    for name, if_unused in [(queue, False)] + [(x, True) for x in shared]:
        try:
            with Connection(os.environ.get("BENCH_AMQP", "amqp://guest:guest@127.0.0.1:5672//")) as c:
                c.default_channel.exchange_delete(name, if_unused=if_unused)
        except Exception:  # noqa: BLE001  (left for the next run's clean-up; nothing else)
            pass
print(json.dumps({"system": system, "items": done, "seconds": secs, "items_per_s": done / secs}))
