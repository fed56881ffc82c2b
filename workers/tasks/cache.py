"""Cache warming: `cache.warm` (an admin's job, with status) and `cache.warm_scheduled` (beat)."""

from __future__ import annotations

from celery import Task, shared_task

from shared.ai.cache import AICache
from shared.ai.providers import build_provider
from shared.caches.warming import TARGETS, AIWarming, Progress, WarmOutcome, warm
from shared.jobs.kinds import KINDS
from shared.resources import Resources
from workers.job_run import JobRun, run_job
from workers.runtime import resources


# Time limits: the cache.warm declaration (shared/jobs/kinds.py), applied by the app.
@shared_task(name="cache.warm", bind=True, ignore_result=True)
def warm_job(self: Task, job_id: str) -> None:
    """Warm the targets an admin asked for, reporting progress on the job."""
    run_job(self, job_id, _warm_for_job)


@shared_task(name="cache.warm_scheduled", bind=True, ignore_result=True)
def warm_scheduled(self: Task) -> dict:
    """Beat's warming run: every target, no job record (nobody polls it)."""
    return run_warm(resources(self.app), TARGETS).to_dict()


def _warm_for_job(run: JobRun) -> str:
    outcome = run_warm(run.res, run.params.get("targets") or TARGETS, run.progress)
    with run.transaction() as session:
        run.complete(session, outcome.to_dict(), message=outcome.summary()[:255])
    return outcome.summary()


def run_warm(res: Resources, targets, progress: Progress | None = None) -> WarmOutcome:
    """One warming run with this process's resources and the configured knobs."""
    settings = res.settings
    provider = build_provider(settings) if "ai" in targets else None
    try:
        ai = None
        if provider is not None:
            ai = AIWarming(
                cache=AICache.from_settings(res.redis, settings),
                provider=provider,
                top=settings.cache_warm_ai_top,
                expiring_seconds=settings.cache_warm_ai_expiring_seconds,
            )
        return warm(
            sessions=res.sessions,
            cache=res.cache,
            targets=targets,
            active_seconds=settings.cache_warm_active_seconds,
            batch_size=settings.cache_warm_batch_size,
            # Outlives the hard limit: a killed run's lock expires on its own.
            lock_ttl=KINDS["cache.warm"].limits(settings.ai_timeout_seconds)[1] + 30,
            ai=ai,
            progress=progress,
        )
    finally:
        if provider is not None:
            provider.close()
