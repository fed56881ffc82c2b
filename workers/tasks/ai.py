"""AI generation jobs: `ai.text`, `ai.presentation`, `ai.image` (queue `ai`, gevent worker).

Each attempt claims the job row (one statement), then runs `shared.ai.generation.generate`
(cache, single-flight, quota, provider) outside any transaction, so a slow
upstream never holds a database connection. Transient failures are retried
with backoff (the job shows RETRY meanwhile); the rest fail with their code.

acks_late is safe because the job-row claim makes a finished job a no-op: a
message redelivered mid-attempt (the worker died) starts the attempt over and
may call the upstream a second time. That costs one more call, never a second
result, and a cached answer is reused if the first call got that far.
"""

from __future__ import annotations

from celery import Task, shared_task
from celery.exceptions import Retry, SoftTimeLimitExceeded

from shared.ai import quota
from shared.ai.errors import AIError
from shared.ai.generation import generate
from shared.ai.providers import retry_delay
from shared.ai.request import AIRequest, AIRequestError
from shared.jobs import JobError
from workers import ai_runtime
from workers.job_run import JobRun, run_job

# Longest wait before a retry; a Retry-After beyond it is cut to it (the
# upstream answers 429 again and that attempt counts as a retry).
MAX_COUNTDOWN_SECONDS = 300


# However long an attempt or a retry's countdown, the worker holding its
# message renews the message's lease (tuning/broker_leases.py), so it is not
# redelivered while it runs or waits.

TASK_OPTIONS = {
    "bind": True,
    "ignore_result": True,
    "acks_late": True,
    # Retries are decided in `_retry_or_fail` from AI_MAX_RETRIES.
    "max_retries": None,
    # Time limits: each kind's declaration, from AI_TIMEOUT_SECONDS, applied by the app.
}


@shared_task(name="ai.text", **TASK_OPTIONS)
def text(self: Task, job_id: str) -> None:
    """Summarize, expand, rewrite or explain the prompt."""
    run_job(self, job_id, _generate, start_with_first_write=True)


@shared_task(name="ai.presentation", **TASK_OPTIONS)
def presentation(self: Task, job_id: str) -> None:
    """A presentation outline: a title and `num_cards` cards of bullets."""
    run_job(self, job_id, _generate, start_with_first_write=True)


@shared_task(name="ai.image", **TASK_OPTIONS)
def image(self: Task, job_id: str) -> None:
    """An image for the prompt, as a URL."""
    run_job(self, job_id, _generate, start_with_first_write=True)


def _generate(run: JobRun) -> str:
    settings = run.res.settings
    try:
        request = AIRequest.from_dict(run.params)
    except AIRequestError as exc:
        # The API validated these params; only a rule change since could land here.
        raise JobError("invalid_request", str(exc)) from None
    # The first progress, with the claim's STARTED document, rides the cache
    # lookup's trip (or, with the AI cache off, the next progress's).
    run.progress(5, f"Generating {request.kind}", defer=True)

    def consume_quota() -> None:
        quota.consume(
            run.res.redis,
            settings.redis_key_prefix,
            run.job.owner_id,
            settings.ai_daily_call_limit,
        )

    try:
        result = generate(
            request,
            ai_runtime.provider(run.task.app),
            ai_runtime.cache(run.task.app),
            before_upstream=consume_quota,
            progress=run.progress,
            with_lookup=run.ride,
        )
    except AIError as error:
        raise _retry_or_fail(run, error) from None
    except SoftTimeLimitExceeded:
        raise JobError("ai_timeout", "the generation ran past its time limit") from None
    # The AI cache keeps its own entries; its hits and misses go into the same
    # counters as every other namespace, so /system/cache-stats shows them.
    # Counted in the trip that announces the outcome, not one of their own.
    hit = result["from_cache"]
    run.with_outcome(
        lambda pipe: run.res.cache.queue_count(pipe, "ai", hits=int(hit), misses=int(not hit))
    )
    # The result is the job's whole effect: one autocommit statement records it.
    run.succeed(result)
    source = "from the cache" if result["from_cache"] else f"by {result['model']}"
    return f"Your {request.kind} is ready ({source})."


def _retry_or_fail(run: JobRun, error: AIError) -> Retry | JobError:
    """Celery's Retry while `error` is transient and retries remain, else the job's failure."""
    settings = run.res.settings
    retries = run.task.request.retries
    if not error.retryable or retries >= settings.ai_max_retries:
        return JobError(error.code, error.message)
    countdown = min(
        retry_delay(retries, settings.ai_retry_backoff_seconds, error.retry_after),
        MAX_COUNTDOWN_SECONDS,
    )
    message = f"{error.code}; retry {retries + 1} of {settings.ai_max_retries} in {countdown:.1f}s"
    return run.retry(error, countdown, message)
