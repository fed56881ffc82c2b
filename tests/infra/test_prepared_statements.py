"""Prepared statements (infra/prepared.py) and the submit's prepared batch INSERT."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from infra.db import create_db_engine
from infra.prepared import PreparedStatement
from shared.jobs import admission_batch, claims
from shared.jobs.admission_batch import INSERT_UNKEYED, JobRow
from shared.jobs.model import utcnow

DOUBLE = PreparedStatement(
    "conveyor_test_double",
    "SELECT %(value)s * 2 AS doubled, current_setting('enable_seqscan') AS seqscan, "
    "'100%%' AS literal",
    types={"value": "integer"},
    settings={"enable_seqscan": "off"},
)


@pytest.fixture
def engine(settings):
    """Autocommit, one pooled connection: each checkout is the same server session."""
    engine = create_db_engine(settings, isolation_level="AUTOCOMMIT", pool_size=1, max_overflow=0)
    yield engine
    engine.dispose()


def _prepared_names(conn) -> list[str]:
    return list(conn.scalars(text("SELECT name FROM pg_prepared_statements ORDER BY name")))


def test_a_statement_is_prepared_once_per_connection_and_runs_by_name(engine):
    with engine.connect() as conn:
        assert DOUBLE.execute(conn, {"value": 21}).one() == (42, "off", "100%")
        assert _prepared_names(conn) == ["conveyor_test_double"]
    with engine.connect() as conn:  # the same session, back from the pool
        assert DOUBLE.execute(conn, {"value": 4}).scalar() == 8
        assert _prepared_names(conn) == ["conveyor_test_double"]
        # The SET LOCAL went with that one statement, not the session.
        assert conn.scalar(text("SHOW enable_seqscan")) == "on"


def test_a_statement_the_session_lost_is_prepared_again(engine):
    with engine.connect() as conn:
        DOUBLE.execute(conn, {"value": 1})
        conn.exec_driver_sql("DEALLOCATE ALL")  # what a proxy's DISCARD ALL does
        assert DOUBLE.execute(conn, {"value": 5}).scalar() == 10
        assert _prepared_names(conn) == ["conveyor_test_double"]


def test_a_connection_that_keeps_losing_its_statements_runs_them_plain(engine):
    """As behind a pooler in transaction mode: each transaction may meet another session."""
    with engine.connect() as conn:
        assert DOUBLE.execute(conn, {"value": 1}).one() == (2, "off", "100%")
        conn.exec_driver_sql("DEALLOCATE ALL")
        assert DOUBLE.execute(conn, {"value": 2}).one() == (4, "off", "100%")  # prepared again
        conn.exec_driver_sql("DEALLOCATE ALL")
        # Lost twice: the plain statement from now on (so its planner settings are not set).
        assert DOUBLE.execute(conn, {"value": 3}).one() == (6, "on", "100%")
        assert DOUBLE.execute(conn, {"value": 4}).scalar() == 8
        assert _prepared_names(conn) == []


def test_a_session_that_kept_a_statement_we_forgot_runs_it(engine):
    with engine.connect() as conn:
        DOUBLE.execute(conn, {"value": 1})
        conn.connection.info.clear()
        assert DOUBLE.execute(conn, {"value": 6}).scalar() == 12


def test_in_a_transaction_a_lost_statement_raises_and_the_next_attempt_runs(settings):
    engine = create_db_engine(settings, pool_size=1, max_overflow=0)
    try:
        with engine.connect() as conn:
            DOUBLE.execute(conn, {"value": 1})
            conn.commit()
            conn.exec_driver_sql("DEALLOCATE ALL")
            conn.commit()
            with pytest.raises(DBAPIError):
                DOUBLE.execute(conn, {"value": 2})  # the transaction is aborted: no retry here
            conn.rollback()
            assert DOUBLE.execute(conn, {"value": 3}).scalar() == 6
    finally:
        engine.dispose()


def test_statements_are_checked_when_declared():
    with pytest.raises(ValueError, match="without a type"):
        PreparedStatement("conveyor_bad", "SELECT %(a)s, %(b)s", types={"a": "int"})
    with pytest.raises(ValueError, match="identifier"):
        PreparedStatement("bad name; DROP", "SELECT 1", types={})
    with pytest.raises(ValueError, match="setting"):
        PreparedStatement("conveyor_bad", "SELECT 1", types={}, settings={"work_mem": "1; x"})


def test_the_unkeyed_batch_counts_through_the_partial_index_even_planned_on_an_empty_table(
    engine,
):
    """The plan is made once and kept: made on an empty table it must not scan the table."""
    schema = f"prep_{uuid.uuid4().hex[:8]}"
    with engine.connect() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
        try:
            conn.exec_driver_sql(f"CREATE TABLE {schema}.jobs (LIKE public.jobs INCLUDING ALL)")
            # Analyzed while empty: the planner then believes a scan of it costs nothing.
            conn.exec_driver_sql(f"ANALYZE {schema}.jobs")
            partial = conn.scalar(
                text(
                    "SELECT indexname FROM pg_indexes WHERE schemaname = :schema "
                    "AND tablename = 'jobs' AND indexdef LIKE '%WHERE%'"
                ),
                {"schema": schema},
            )
            conn.exec_driver_sql(f"SET search_path = {schema}, public")
            conn.exec_driver_sql(INSERT_UNKEYED.prepare_sql)
            now = utcnow()
            explain = INSERT_UNKEYED.execute_sql.replace("EXECUTE ", "EXPLAIN (COSTS OFF) EXECUTE ")
            plan = "\n".join(
                conn.exec_driver_sql(
                    explain,
                    {
                        "ids": [str(uuid.uuid4())],
                        "owners": [1],
                        "kinds": ["ledger.transaction"],
                        "queues": ["ledger"],
                        "params": ["{}"],
                        "caps": [50],
                        "now": now,
                        "expires": now + timedelta(days=1),
                    },
                ).scalars()
            )
            # Looked up by owner (a condition on the index), not the whole index filtered.
            assert f"Index Only Scan using {partial} on jobs" in plan, plan
            assert "Index Cond: (owner_id = " in plan, plan
            assert "Seq Scan on jobs" not in plan, plan
        finally:
            conn.exec_driver_sql("DEALLOCATE ALL")
            conn.exec_driver_sql("RESET search_path")
            conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")


@pytest.mark.parametrize("statement", [claims._CLAIM_PREPARED, claims._FINISH_PREPARED])
def test_claim_and_finish_find_the_row_by_its_key_after_the_table_grew(engine, statement):
    """Prepared while `jobs` was empty, they look the row up by its key once it has grown."""
    schema = f"prep_{uuid.uuid4().hex[:8]}"
    explain = statement.execute_sql.replace("EXECUTE ", "EXPLAIN (COSTS OFF) EXECUTE ")
    values = {name: None for name in ("new_state", "new_message", "new_error_code")}
    values |= {"new_error_message": None, "new_result": None, "new_progress": None}
    values |= {"job_id": str(uuid.uuid4()), "now": utcnow()}
    with engine.connect() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
        try:
            conn.exec_driver_sql(f"CREATE TABLE {schema}.jobs (LIKE public.jobs INCLUDING ALL)")
            conn.exec_driver_sql(f"ANALYZE {schema}.jobs")
            conn.exec_driver_sql(f"SET search_path = {schema}, public")
            conn.exec_driver_sql(statement.prepare_sql)
            for _ in range(6):  # past the five runs after which a kept plan may be chosen
                conn.exec_driver_sql(explain, values).all()
            conn.exec_driver_sql(
                f"INSERT INTO {schema}.jobs (id, owner_id, kind, queue, state, progress, message,"
                " params, attempts, created_at, updated_at, expires_at)"
                " SELECT gen_random_uuid(), g %% 50, 'ai.text', 'ai', 'PENDING', 0, 'queued',"
                " '{}', 0, now(), now(), now() FROM generate_series(1, 20000) g"
            )
            plan = "\n".join(conn.exec_driver_sql(explain, values).scalars())
            assert "Index Scan using jobs_pkey on jobs" in plan, plan
        finally:
            conn.exec_driver_sql("DEALLOCATE ALL")
            conn.exec_driver_sql("RESET search_path")
            conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")


def test_a_prepared_claim_and_finish_answer_as_the_orm_ones_do(resources, make_user):
    owner_id, _ = make_user()
    now = utcnow()
    first, second = (
        JobRow(uuid.uuid4(), owner_id, "ai.text", "ai", {"n": n}, None, None, None) for n in (1, 2)
    )
    with resources.autocommit_engine.connect() as conn:
        admission_batch.insert_jobs(conn, [first, second], now=now, expires_at=now)
        prepared = claims.claim(conn, first.id)
        done = claims.finish_job(conn, first.id, state="SUCCESS", result={"text": "é"})
    with resources.sessions.begin() as session:  # the ORM's statements, for comparison
        plain = claims.claim(session, second.id)
        plain_done = claims.finish_job(session, second.id, state="SUCCESS", result={"text": "é"})
    assert prepared.id == first.id and isinstance(prepared.id, uuid.UUID)
    for field in ("owner_id", "kind", "attempts"):
        assert getattr(prepared, field) == getattr(plain, field)
    assert prepared.params == {"n": 1} and prepared.created_at.tzinfo is not None
    assert done.status.keys() == plain_done.status.keys()
    assert done.status["result"] == plain_done.status["result"] == {"text": "é"}
    assert (done.status["state"], done.status["progress"]) == ("SUCCESS", 100)
    assert done.has_webhooks is plain_done.has_webhooks is False


def test_unkeyed_and_keyed_batches_take_their_statements(resources, make_user):
    """Both statements admit by the same rule: the owner's unfinished jobs + rank <= cap."""
    owner_id, _ = make_user()
    now = utcnow()

    def rows(count: int, key_prefix: str | None = None) -> list[JobRow]:
        return [
            JobRow(
                id=uuid.uuid4(),
                owner_id=owner_id,
                kind="ledger.transaction",
                queue="ledger",
                params={"n": index},
                idempotency_key=f"{key_prefix}{index}" if key_prefix else None,
                request_hash="h" if key_prefix else None,
                max_inflight=5,
            )
            for index in range(count)
        ]

    with resources.autocommit_engine.connect() as conn:
        first = rows(3)
        assert admission_batch.insert_jobs(
            conn, first, now=now, expires_at=now + timedelta(days=1)
        ) == {row.id for row in first}
        assert "conveyor_insert_unkeyed_jobs" in _prepared_names(conn)
        keyed = rows(3, key_prefix=f"k{uuid.uuid4().hex}-")
        inserted = admission_batch.insert_jobs(
            conn, keyed, now=now, expires_at=now + timedelta(days=1)
        )
        assert inserted == {keyed[0].id, keyed[1].id}  # 3 + 2 = the cap of 5
        assert (
            admission_batch.insert_jobs(conn, rows(2), now=now, expires_at=now + timedelta(days=1))
            == set()
        )
        # Unprepared (a connection that keeps losing its statements): the same verdicts.
        conn.exec_driver_sql(
            "UPDATE jobs SET state = 'SUCCESS' WHERE owner_id = %(owner)s", {"owner": owner_id}
        )
        plain = rows(7)
        values = {
            "ids": [str(row.id) for row in plain],
            "owners": [owner_id] * 7,
            "kinds": ["ledger.transaction"] * 7,
            "queues": ["ledger"] * 7,
            "params": ["{}"] * 7,
            "caps": [5] * 7,
            "now": now,
            "expires": now + timedelta(days=1),
        }
        inserted = {row[0] for row in conn.exec_driver_sql(INSERT_UNKEYED.plain_sql, values)}
        assert {str(job_id) for job_id in inserted} == {str(row.id) for row in plain[:5]}
