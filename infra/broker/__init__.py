"""The broker, owned here: envelope, queue keys, configuration, publishing, depth, in-flight.

Like flower's one broker module, everything that knows how Redis or RabbitMQ
holds Celery's messages lives in this package; the API, the workers and the
sweeps call it and never spell a queue key or build a message themselves.

- `envelope`: Celery's protocol-2 message for a job; reading a stored one's id.
- `keys`: where kombu's Redis transport keeps queues and unacked messages.
- `config`: Celery's broker settings for Redis (leases) or RabbitMQ (quorum).
- `publish`: one `Publisher` per process; every submission goes through it.
- `depth`: messages waiting per queue, for admission control and metrics.
- `inflight`: which PENDING jobs' messages may still be on the broker.
"""
