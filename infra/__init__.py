"""The plumbing every process shares: settings, the database, Redis, the broker, logging.

Nothing here knows a job, a wallet or a user: the domain (`shared/`) and the
adapters (`api/`, `workers/`) import it, never the other way round.

- `settings`: the one Settings object, read from the environment once.
- `db`: engines and session factories; `prepared`: server-side prepared statements.
- `redis_store`: the Redis client and Conveyor's key prefix.
- `broker/`: Celery's broker settings, the job message, publishing, queue depth.
- `logging_setup`, `redaction`: JSON log lines with secrets removed.
- `slow_queries`: the slow-query log behind `/system/slow-queries`.
- `gevent_support`: cooperative psycopg2 in gevent processes.
"""
