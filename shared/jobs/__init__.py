"""Jobs: what they are (model), their kinds, their rows (records) and their live status.

`from shared import jobs` gives the whole public surface; the submodules say
who owns what: `kinds` the declarations, `records` the API's statements on a
job row (admission, reads, cancel), `claims` a worker's (claim, finish),
`status` the live document in Redis, `events` its log, `streams` a client's
event stream, `submission` recording and publishing a batch of submissions.
"""

from shared.jobs.claims import claim, finish, lock_unfinished, mark_state
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
    id_prefix_range,
    isoformat,
    parse_job_id,
    request_hash,
    status_from_row,
    utcnow,
)
from shared.jobs.records import cancel_job, create_job, delete_job, get_status, list_jobs
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
    "id_prefix_range",
    "isoformat",
    "list_jobs",
    "lock_unfinished",
    "mark_state",
    "parse_job_id",
    "request_hash",
    "status_from_row",
    "utcnow",
]
