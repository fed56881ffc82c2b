"""ledger postings in batches: conveyor_post_ledger_jobs(job_ids, posted_at, unfinished)

One call applies a list of `ledger.transaction` jobs in one transaction (one
round trip, one commit), each job with its own outcome; see
shared/ledger/job_posting.py for what the function guarantees and how it is used.
PostgreSQL only: on SQLite (development) workers take the general path.

Revision ID: 0006_ledger_posting_function
Revises: 0005_webhooks
Create Date: 2026-12-01 17:40:00
"""

from alembic import op

revision = "0006_ledger_posting_function"
down_revision = "0005_webhooks"
branch_labels = None
depends_on = None

# Locks are taken in one global order, so two calls (or a call and a single
# job's transaction, which locks its job row, then its wallet) never wait on
# each other in a cycle: first every unfinished job row of the list, by id
# (a job delivered twice can sit in two concurrent lists), then, job by job in
# owner order (and in the caller's order within an owner, so one wallet's
# postings apply in arrival order), each wallet. Per job, one statement of
# data-modifying CTEs:
# - `job` locks the job row if it is still unfinished (a cancelled, finished or
#   unknown job yields nothing, so nothing else happens);
# - `wallet` moves the balance only if it stays >= 0 (PostgreSQL re-checks the
#   condition on the newest row version, as SELECT ... FOR UPDATE would);
# - `entry` appends the ledger entry, unique on (job, seq) as always;
# - `done` marks the job SUCCESS with its result.
# A row per job comes back: r_claimed_owner NULL means skipped; an owner with
# r_id NULL means refused (the debit would overdraw; nothing was written for
# that job); otherwise r_* is the finished job's status row.
_CREATE = """
CREATE FUNCTION conveyor_post_ledger_jobs(
    job_ids uuid[], posted_at timestamptz, unfinished text[]
)
RETURNS TABLE (
    r_job_id uuid, r_claimed_owner bigint, r_entry_type text, r_amount bigint,
    r_has_webhooks boolean, r_id uuid, r_owner_id bigint, r_kind text, r_state text,
    r_progress integer, r_message text, r_created_at timestamptz,
    r_updated_at timestamptz, r_expires_at timestamptz, r_result jsonb,
    r_error_code text, r_error_message text
)
LANGUAGE plpgsql AS $fn$
DECLARE
    next_id uuid;
BEGIN
    PERFORM 1 FROM jobs
    WHERE jobs.id = ANY(job_ids) AND jobs.kind = 'ledger.transaction'
        AND jobs.state = ANY(unfinished)
    ORDER BY jobs.id
    FOR UPDATE;
    FOR next_id IN
        SELECT ids.id
        FROM unnest(job_ids) WITH ORDINALITY AS ids(id, pos)
        LEFT JOIN jobs ON jobs.id = ids.id
        ORDER BY jobs.owner_id NULLS LAST, ids.pos
    LOOP
        RETURN QUERY
        WITH job AS (
            SELECT jobs.id, jobs.owner_id,
                jobs.params ->> 'type' AS type,
                (jobs.params ->> 'amount')::bigint AS amount,
                coalesce(jobs.params ->> 'description', '') AS description,
                CASE WHEN jobs.params ->> 'type' = 'credit' THEN 1 ELSE -1 END
                    * (jobs.params ->> 'amount')::bigint AS delta
            FROM jobs
            WHERE jobs.id = next_id AND jobs.kind = 'ledger.transaction'
                AND jobs.state = ANY(unfinished)
            FOR UPDATE
        ), wallet AS (
            UPDATE wallets SET balance = wallets.balance + job.delta, updated_at = posted_at
            FROM job
            WHERE wallets.user_id = job.owner_id AND wallets.balance + job.delta >= 0
            RETURNING wallets.id, wallets.balance
        ), entry AS (
            INSERT INTO ledger_entries
                (wallet_id, job_id, seq, type, amount, balance_after, description, created_at)
            SELECT wallet.id, job.id, 0, job.type, job.amount, wallet.balance,
                job.description, posted_at
            FROM wallet, job
            RETURNING ledger_entries.id, ledger_entries.balance_after
        ), done AS (
            UPDATE jobs SET
                state = 'SUCCESS',
                progress = 100,
                message = 'done',
                result = jsonb_build_object(
                    'transaction_id', entry.id, 'balance', entry.balance_after
                ),
                attempts = jobs.attempts + 1,
                started_at = coalesce(jobs.started_at, posted_at),
                updated_at = posted_at,
                finished_at = posted_at
            FROM entry
            WHERE jobs.id = next_id
            RETURNING jobs.id, jobs.owner_id, jobs.kind, jobs.state, jobs.progress,
                jobs.message, jobs.created_at, jobs.updated_at, jobs.expires_at,
                jobs.result, jobs.error_code, jobs.error_message
        )
        SELECT next_id,
            (SELECT job.owner_id FROM job)::bigint,
            (SELECT job.type FROM job),
            (SELECT job.amount FROM job),
            EXISTS (
                SELECT 1 FROM webhook_endpoints, job
                WHERE webhook_endpoints.owner_id = job.owner_id
            ),
            done.id, done.owner_id::bigint, done.kind::text, done.state::text,
            done.progress::integer, done.message::text, done.created_at, done.updated_at,
            done.expires_at, done.result::jsonb, done.error_code::text,
            done.error_message::text
        FROM (SELECT 1) AS one LEFT JOIN done ON true;
    END LOOP;
END
$fn$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_CREATE)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS conveyor_post_ledger_jobs(uuid[], timestamptz, text[])")
