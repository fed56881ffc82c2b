"""Jobs: what they are (model), their kinds, their rows (records) and their live status.

`from shared import jobs` gives the whole public surface; the submodules say
who owns what: `kinds` the declarations, `records` every SQL statement on a
job row, `status` the live document in Redis.
"""

from shared.jobs.kinds import KIND_QUEUES, KINDS, JobKind
from shared.jobs.model import (
    STATES,
    TERMINAL,
    UNFINISHED,
    ClaimedJob,
    IdempotencyKeyReused,
    JobAlreadyFinished,
    JobError,
    JobNotFound,
    Submission,
    TooManyInflightJobs,
    isoformat,
    parse_job_id,
    request_hash,
    status_from_row,
    utcnow,
)
from shared.jobs.records import (
    cancel_job,
    claim,
    create_job,
    delete_job,
    finish,
    get_status,
    list_jobs,
    lock_unfinished,
    mark_state,
)
from shared.jobs.status import STATUS_TTL_SECONDS, LiveDocument, StatusStore

__all__ = [
    "KINDS",
    "KIND_QUEUES",
    "STATES",
    "STATUS_TTL_SECONDS",
    "TERMINAL",
    "UNFINISHED",
    "ClaimedJob",
    "IdempotencyKeyReused",
    "JobAlreadyFinished",
    "JobError",
    "JobKind",
    "JobNotFound",
    "LiveDocument",
    "StatusStore",
    "Submission",
    "TooManyInflightJobs",
    "cancel_job",
    "claim",
    "create_job",
    "delete_job",
    "finish",
    "get_status",
    "isoformat",
    "list_jobs",
    "lock_unfinished",
    "mark_state",
    "parse_job_id",
    "request_hash",
    "status_from_row",
    "utcnow",
]
