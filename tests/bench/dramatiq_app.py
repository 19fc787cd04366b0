"""Dramatiq side of the comparison: RabbitMQ broker, one Redis INCR per message."""
import os

import dramatiq
import redis
from dramatiq.brokers.rabbitmq import RabbitmqBroker

QUEUE = os.environ.get("BENCH_QUEUE", "docfleet-bench-dramatiq")
dramatiq.set_broker(RabbitmqBroker(url=os.environ.get("BENCH_AMQP", "amqp://guest:guest@127.0.0.1:5672/%2f")))
r = redis.Redis()


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def work(i):
    r.incr(f"{QUEUE}:done")
