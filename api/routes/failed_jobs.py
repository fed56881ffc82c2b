"""Failed jobs for admins: listed by cause, replayed (one, a list, a filter's worth), audited.

A replay runs the same job again: same task id, a new attempt, its history
kept (shared/jobs/replay.py says why). `dry_run` answers what a selection
would replay and changes nothing.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, g, jsonify

from api.dispatch import message_headers
from api.extensions import publisher, resources
from api.failed_job_schemas import (
    FailedJobFilter,
    FailedJobPage,
    FailedJobsQuery,
    ReplayAccepted,
    ReplayHistory,
    ReplayPreview,
    ReplayRequest,
)
from api.openapi import documented
from api.requests import parse_body, parse_query
from api.schemas import PageQuery
from api.security import require_admin
from infra import tracing
from shared.jobs import replay

bp = Blueprint("failed_jobs", __name__, url_prefix="/api/v1/system/failed-jobs")


def _filter(model: FailedJobFilter) -> replay.FailedFilter:
    return replay.FailedFilter(
        kind=model.kind,
        error_code=model.error_code,
        user_id=model.user_id,
        since=model.since,
        until=model.until,
    )


@bp.get("")
@require_admin
@documented(
    "Failed jobs, newest failure first (filters: kind, error_code, user_id, since, until)",
    auth="admin",
    query=FailedJobsQuery,
    responses={200: FailedJobPage},
)
def list_failed_jobs() -> Response:
    query = parse_query(FailedJobsQuery)
    with resources().sessions() as session:
        items, total = replay.list_failed(
            session, _filter(query), page=query.page, limit=query.limit
        )
    return jsonify({"items": items, "page": query.page, "limit": query.limit, "total": total})


@bp.post("/replay")
@require_admin
@documented(
    "Run failed jobs again (same task ids, a new attempt each); dry_run previews",
    auth="admin",
    body=ReplayRequest,
    responses={202: ReplayAccepted, 200: ReplayPreview},
)
def replay_failed_jobs() -> tuple[Response, int]:
    body = parse_body(ReplayRequest)
    flt = _filter(body.filter) if body.filter is not None else None
    res = resources()
    if body.dry_run:
        with res.sessions() as session:
            preview = replay.preview(session, body.task_ids, flt)
        return jsonify(_preview_body(preview)), 200
    outcome = replay.replay(
        res.sessions,
        publisher(),
        res.statuses,
        task_ids=body.task_ids,
        flt=flt,
        admin_id=g.identity.user_id,
        selection=body.model_dump(mode="json", exclude={"dry_run"}, exclude_none=True),
        ttl_seconds=res.settings.job_ttl_seconds,
        message_headers=message_headers,
        # Traced: each replayed job's run continues the replay request's trace.
        trace_headers=(lambda _job_id: tracing.inject({})) if tracing.ACTIVE else None,
    )
    return jsonify(_accepted_body(outcome)), 202


def _preview_body(preview: replay.ReplayOutcome) -> dict[str, Any]:
    return {
        "items": preview.queued,
        "replayed": 0,
        "would_replay": len(preview.queued),
        "skipped": preview.skipped,
        "dry_run": True,
    }


def _accepted_body(outcome: replay.ReplayOutcome) -> dict[str, Any]:
    return {
        "items": outcome.queued,
        "replayed": len(outcome.queued),
        "replay_id": outcome.replay_id,
        "skipped": outcome.skipped,
        "dry_run": False,
    }


@bp.get("/replays")
@require_admin
@documented(
    "Recorded replays, newest first: who replayed which jobs, when",
    auth="admin",
    query=PageQuery,
    responses={200: ReplayHistory},
)
def list_replays() -> Response:
    query = parse_query(PageQuery)
    with resources().sessions() as session:
        items, total = replay.replay_history(session, page=query.page, limit=query.limit)
    return jsonify({"items": items, "page": query.page, "limit": query.limit, "total": total})
