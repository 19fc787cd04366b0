"""Celery side of the comparison: RabbitMQ broker, acks_late, one Redis INCR per task, no result
backend — what a user would pick instead of docfleet for the same job."""
import os

import redis
from celery import Celery

QUEUE = os.environ.get("BENCH_QUEUE", "docfleet-bench-celery")
app = Celery("bench", broker=os.environ.get("BENCH_AMQP", "amqp://guest:guest@127.0.0.1:5672//"))
app.conf.update(task_acks_late=True, worker_prefetch_multiplier=16, task_ignore_result=True,
                task_default_queue=QUEUE, broker_connection_retry_on_startup=True)
r = redis.Redis()


@app.task
def work(i):
    r.incr(f"{QUEUE}:done")
