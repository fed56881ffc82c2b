"""Celery settings (lowercase only). Broker and backend URLs come from Settings at start-up."""

from __future__ import annotations

from kombu import Exchange, Queue

from beat_schedule import beat_schedule  # noqa: F401 - read by Celery as a setting
from shared.jobs import kinds as job_kinds

# JSON only: a pickled message is refused, never executed.
accept_content = ["json"]
task_serializer = "json"
result_serializer = "json"
result_accept_content = ["json"]
event_serializer = "json"

# Lets Flower and AsyncResult see STARTED, not just PENDING then SUCCESS.
task_track_started = True
# Acknowledge after the task returns, so a worker that dies mid-task leaves the
# message to be redelivered; safe because every job task is idempotent
# (job-row claim + unique ledger keys). Non-idempotent tasks opt out.
task_acks_late = True
task_reject_on_worker_lost = True
# One message reserved per process/greenlet: long tasks are not hoarded by a
# busy worker while another sits idle.
worker_prefetch_multiplier = 1

# Each queue gets its own direct exchange and routing key; left implicit, all
# three would share the default queue's exchange binding.
task_queues = tuple(
    Queue(name, Exchange(name, type="direct"), routing_key=name) for name in job_kinds.QUEUES
)
task_default_queue = "maintenance"
# Each job kind goes to the queue its declaration names (shared/jobs/kinds.py).
task_routes = job_kinds.task_routes()

# The Redis transport's visibility timeout and lease renewal come from
# Settings (BROKER_VISIBILITY_TIMEOUT) in workers/app.py; see tuning/broker_leases.py.
# Results of tasks that store them (the canary) are not needed past a day.
result_expires = 24 * 3600
# Fallback limits for any task that does not set its own on the decorator.
task_soft_time_limit = 50
task_time_limit = 60
# Keep retrying the broker at start-up instead of crashing when Redis is late.
broker_connection_retry_on_startup = True
# A publish from the web process gives up within about a second, so a dead
# broker is a prompt 503 to the client, not a hung request.
broker_connection_timeout = 2
task_publish_retry_policy = {
    "max_retries": 2,
    "interval_start": 0,
    "interval_step": 0.25,
    "interval_max": 0.5,
}
# A lost broker connection means unacked messages will be redelivered; cancel
# the running copies rather than let them finish as duplicates.
worker_cancel_long_running_tasks_on_connection_loss = True
# gevent workers share one backend client between greenlets.
result_backend_thread_safe = True
# Task events (received/started/succeeded) cost the worker's main process a
# publish each, a fifth of its time when draining short ledger jobs (py-spy).
# Off by default: Flower turns them on in every worker it sees (its
# enable_events option, on by default) for as long as it runs, so they cost
# nothing when nobody watches. Worker heartbeats are sent either way.
worker_send_task_events = False
# No "task-sent" event: it is a second fanout publish on every submit (about
# 0.9 ms of the web process's CPU, measured with cProfile), and Flower learns
# of each task from the worker's task-received event anyway.
task_send_sent_event = False
timezone = "UTC"
enable_utc = True
# Conveyor configures logging itself; Celery must not replace the root logger.
worker_hijack_root_logger = False
