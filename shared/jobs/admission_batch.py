"""Recording a batch of submitted jobs in ONE statement, each row keeping its own admission.

The group-committed submit path (shared/jobs/submission.submit_many) inserts
every job of a batch with one multi-row INSERT on PostgreSQL: one statement,
one commit (autocommit), one round trip. Per row, in that statement:

- Idempotency-Key: a keyed row is inserted only when no job of its owner holds
  the key yet and no earlier row of the batch repeats it; ON CONFLICT DO
  NOTHING settles a race with another process. A keyed row left out is NOT
  decided here: the caller resolves it on the single path (records.create_job:
  replay, 422 for another body, a stale key released, or 429), whose answer is
  then exactly today's.
- Admission (MAX_INFLIGHT_JOBS): the owner's unfinished jobs are counted once
  (the partial index ix_jobs_owner_unfinished) and each inserted row is ranked
  among the batch's rows of the same owner (a window row_number in submission
  order), so a row is admitted while count + rank <= its cap: exactly the
  over-cap rows of the batch are refused. Across processes the count is a
  snapshot, as on the single path: the cap protects capacity, it is not an
  invariant.

A batch without Idempotency-Keys (the usual one) takes a smaller statement,
prepared once per connection (infra/prepared.py): planning the statement
cost the server more than inserting a dozen rows. Its plan is made once and
kept, so it must not depend on how big `jobs` was at that moment: the
owner's count is a per-row (LATERAL) lookup, planned with sequential scans
off, so it is always the partial index's, at any size of the table.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from infra.prepared import PreparedStatement
from shared.jobs.model import UNFINISHED_SQL


@dataclass(frozen=True)
class JobRow:
    """One job of a batch, as it will be inserted (PENDING, attempt 0)."""

    id: uuid.UUID
    owner_id: int
    kind: str
    queue: str
    params: dict[str, Any]
    idempotency_key: str | None
    request_hash: str | None
    # MAX_INFLIGHT_JOBS for this row; None admits it whatever the owner has running.
    max_inflight: int | None


# Every value is an array parameter, unnested in submission order (ordinality),
# so the statement text never changes with the batch size (the server parses
# one text; psycopg2 renders each list as one ARRAY literal). The states are
# spelled into the text (constants, no input) so the planner matches the
# partial index's predicate.
INSERT_BATCH = f"""
WITH batch AS (
    SELECT *
    FROM unnest(
        %(ids)s::uuid[], %(owners)s::bigint[], %(kinds)s::text[], %(queues)s::text[],
        %(params)s::jsonb[], %(keys)s::text[], %(hashes)s::text[], %(caps)s::integer[]
    ) WITH ORDINALITY
      AS b(id, owner_id, kind, queue, params, idempotency_key, request_hash, max_inflight, ord)
),
candidates AS (
    SELECT b.*, row_number() OVER (PARTITION BY b.owner_id ORDER BY b.ord) AS nth
    FROM batch b
    WHERE b.idempotency_key IS NULL
       OR (
           NOT EXISTS (
               SELECT 1 FROM jobs j
               WHERE j.owner_id = b.owner_id AND j.idempotency_key = b.idempotency_key
           )
           AND NOT EXISTS (
               SELECT 1 FROM batch e
               WHERE e.owner_id = b.owner_id AND e.idempotency_key = b.idempotency_key
                 AND e.ord < b.ord
           )
       )
),
inflight AS (
    SELECT j.owner_id, count(*) AS n
    FROM jobs j
    WHERE j.owner_id IN (SELECT c.owner_id FROM candidates c WHERE c.max_inflight IS NOT NULL)
      AND j.state IN ({UNFINISHED_SQL})
    GROUP BY j.owner_id
)
INSERT INTO jobs (
    id, owner_id, kind, queue, state, progress, message, params, idempotency_key,
    request_hash, attempts, created_at, updated_at, expires_at
)
SELECT c.id, c.owner_id, c.kind, c.queue, 'PENDING', 0, 'queued', c.params, c.idempotency_key,
       c.request_hash, 0, %(now)s, %(now)s, %(expires)s
FROM candidates c LEFT JOIN inflight i ON i.owner_id = c.owner_id
WHERE c.max_inflight IS NULL OR coalesce(i.n, 0) + c.nth <= c.max_inflight
ORDER BY c.ord
ON CONFLICT (owner_id, idempotency_key) DO NOTHING
RETURNING id
"""  # noqa: S608

# The same for a batch without keys: no key lookups, and the owner's count one
# index lookup per row (LATERAL), whatever the planner knows of the table.
INSERT_UNKEYED = PreparedStatement(
    "conveyor_insert_unkeyed_jobs",
    f"""
WITH batch AS (
    SELECT *
    FROM unnest(
        %(ids)s, %(owners)s, %(kinds)s, %(queues)s, %(params)s, %(caps)s
    ) WITH ORDINALITY AS b(id, owner_id, kind, queue, params, max_inflight, ord)
),
candidates AS (
    SELECT b.*, row_number() OVER (PARTITION BY b.owner_id ORDER BY b.ord) AS nth
    FROM batch b
)
INSERT INTO jobs (
    id, owner_id, kind, queue, state, progress, message, params, attempts,
    created_at, updated_at, expires_at
)
SELECT c.id, c.owner_id, c.kind, c.queue, 'PENDING', 0, 'queued', c.params, 0,
       %(now)s, %(now)s, %(expires)s
FROM candidates c
LEFT JOIN LATERAL (
    SELECT count(*) AS n
    FROM jobs j
    WHERE c.max_inflight IS NOT NULL
      AND j.owner_id = c.owner_id AND j.state IN ({UNFINISHED_SQL})
) i ON true
WHERE c.max_inflight IS NULL OR i.n + c.nth <= c.max_inflight
ORDER BY c.ord
RETURNING id
""",  # noqa: S608
    types={
        "ids": "uuid[]",
        "owners": "bigint[]",
        "kinds": "text[]",
        "queues": "text[]",
        "params": "jsonb[]",
        "caps": "integer[]",
        "now": "timestamptz",
        "expires": "timestamptz",
    },
    # One plan, made at once and kept (no custom plans first): on an empty
    # table a sequential scan looks cheapest, and a kept plan would go on
    # scanning the whole table as it grows.
    settings={"plan_cache_mode": "force_generic_plan", "enable_seqscan": "off"},
)

DELETE_UNPUBLISHED = "DELETE FROM jobs WHERE id = ANY(%(ids)s::uuid[]) AND state = 'PENDING'"


def supports_batch_insert(conn: Connection) -> bool:
    """The one-statement batch needs PostgreSQL; SQLite (development) takes the single path."""
    return conn.dialect.name == "postgresql"


def insert_jobs(
    conn: Connection, rows: list[JobRow], *, now: datetime, expires_at: datetime
) -> set[uuid.UUID]:
    """Insert the admitted, not-yet-keyed rows of `rows` in one statement; the ids inserted.

    `conn` should be in autocommit mode (the statement is atomic on its own).
    A row missing from the answer was refused by admission (no key) or needs
    the single path (a key taken, repeated in the batch, or lost in a race).
    """
    values = {
        "ids": [str(row.id) for row in rows],
        "owners": [row.owner_id for row in rows],
        "kinds": [row.kind for row in rows],
        "queues": [row.queue for row in rows],
        "params": [json.dumps(row.params) for row in rows],
        "caps": [row.max_inflight for row in rows],
        "now": now,
        "expires": expires_at,
    }
    if any(row.idempotency_key is not None for row in rows):
        values["keys"] = [row.idempotency_key for row in rows]
        values["hashes"] = [row.request_hash for row in rows]
        result = conn.exec_driver_sql(INSERT_BATCH, values)
    else:
        result = INSERT_UNKEYED.execute(conn, values)
    return {_as_uuid(job_id) for (job_id,) in result}


def delete_unpublished(conn: Connection, job_ids: list[uuid.UUID]) -> None:
    """Remove jobs whose messages never reached the broker (their requests answer 503)."""
    if job_ids:
        conn.exec_driver_sql(DELETE_UNPUBLISHED, {"ids": [str(job_id) for job_id in job_ids]})


def _as_uuid(value: Any) -> uuid.UUID:
    # psycopg2 hands back a str unless its UUID adapter is registered.
    return value if isinstance(value, uuid.UUID) else uuid.UUID(value)
