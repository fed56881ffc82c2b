"""What must hold after every scenario, checked in the database and through the API.

`db` is anything with `query(statement, params) -> rows` on the scenario's
database (bench's BenchDatabase or chaos.stack.ClusterDatabase).
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any, Protocol

from chaos.load import TERMINAL, Http, Load, RequestFailed

# The only way a ledger job may fail: a debit larger than the balance. Any
# other failure means an accepted transaction was not applied (SPEC: "every
# accepted transaction is applied exactly once").
EXPECTED_FAILURE = "insufficient_funds"
_SIGNED = "CASE e.type WHEN 'credit' THEN e.amount ELSE -e.amount END"


class Database(Protocol):
    def query(self, statement: str, params: tuple = ()) -> list[tuple]: ...


def _sample(items: list[Any], n: int = 3) -> str:
    return ", ".join(str(i) for i in items[:n]) + (" ..." if len(items) > n else "")


def job_states(db: Database, ids: list[str]) -> dict[str, str]:
    rows = db.query("SELECT id::text, state FROM jobs WHERE id = ANY(%s::uuid[])", (ids,))
    return dict(rows)


def wait_terminal(db: Database, ids: list[str], timeout: float) -> list[str]:
    """Wait until every accepted job is terminal; violations if some are missing or not."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            states = job_states(db, ids)
        except Exception as exc:  # the database may still be recovering
            states, error = {}, exc
        else:
            error = None
            unfinished = [i for i in ids if states.get(i) not in TERMINAL]
            if not unfinished:
                return []
        if time.monotonic() >= deadline:
            break
        time.sleep(1.0)
    if error is not None:
        return [f"could not read job states: {error}"]
    missing = [i for i in ids if i not in states]
    stuck = [i for i in unfinished if i in states]
    violations = []
    if missing:
        violations.append(f"{len(missing)} accepted jobs have no job row: {_sample(missing)}")
    if stuck:
        by_state = Counter(states[i] for i in stuck)
        violations.append(
            f"{len(stuck)} jobs not terminal {timeout:.0f} s after the load ended "
            f"({dict(by_state)}): {_sample(stuck)}"
        )
    return violations


def outcomes(db: Database, ids: list[str]) -> Counter:
    """SUCCESS / FAILURE / ... counts, failures also per error code ("FAILURE:code")."""
    counts: Counter = Counter()
    for state, code, n in db.query(
        "SELECT state, error_code, count(*) FROM jobs WHERE id = ANY(%s::uuid[]) GROUP BY 1, 2",
        (ids,),
    ):
        counts[state] += n
        if state == "FAILURE":
            counts[f"FAILURE:{code}"] += n
    return counts


def ledger_violations(db: Database, ids: list[str]) -> list[str]:
    """Balances match their ledgers and never go negative; every job posted exactly its entries."""
    violations = []
    wallets = db.query(
        f"""SELECT w.id, w.balance, COALESCE(SUM({_SIGNED}), 0)
            FROM wallets w LEFT JOIN ledger_entries e ON e.wallet_id = w.id
            GROUP BY w.id, w.balance
            HAVING w.balance <> COALESCE(SUM({_SIGNED}), 0) OR w.balance < 0"""
    )
    for wallet, balance, total in wallets:
        violations.append(f"wallet {wallet}: balance {balance} but its ledger sums to {total}")
    # Entries are appended under the wallet's row lock, so id order is posting order.
    running = db.query(
        f"""SELECT wallet_id, id, balance_after, running FROM (
              SELECT e.wallet_id, e.id, e.balance_after,
                     SUM({_SIGNED}) OVER (PARTITION BY e.wallet_id ORDER BY e.id) AS running
              FROM ledger_entries e) t
            WHERE balance_after <> running OR running < 0 LIMIT 5"""
    )
    for wallet, entry, after, total in running:
        violations.append(
            f"wallet {wallet} entry {entry}: balance_after {after}, running sum {total}"
        )
    doubles = db.query(
        "SELECT job_id::text, seq, count(*) FROM ledger_entries GROUP BY 1, 2 HAVING count(*) > 1"
    )
    for job, seq, n in doubles:
        violations.append(f"job {job} posted entry {seq} {n} times")
    rows = db.query(
        """SELECT j.id::text, j.kind, j.state, j.error_code, j.params,
                  count(e.id), count(DISTINCT e.seq), min(e.seq), max(e.seq),
                  bool_and(w.user_id = j.owner_id),
                  bool_and(e.type = j.params->>'type' AND e.amount = (j.params->>'amount')::bigint)
           FROM jobs j
           LEFT JOIN ledger_entries e ON e.job_id = j.id
           LEFT JOIN wallets w ON w.id = e.wallet_id
           WHERE j.id = ANY(%s::uuid[])
           GROUP BY j.id""",
        (ids,),
    )
    for job, kind, state, code, params, n, seqs, low, high, owned, matches in rows:
        violations += _job_violations(
            job, kind, state, code, params, n, seqs, low, high, owned, matches
        )
    return violations


def _job_violations(
    job, kind, state, code, params, n, seqs, low, high, owned, matches
) -> list[str]:
    if n and not owned:
        return [f"job {job} posted to another user's wallet"]
    if state == "SUCCESS" and kind == "ledger.transaction":
        if n != 1:
            return [f"SUCCESS {params['type']} job {job} has {n} ledger entries, not 1"]
        if not matches:
            return [f"SUCCESS job {job}: its entry does not match {params}"]
    elif state == "SUCCESS" and kind == "ledger.random":
        want = params["count"]
        if (n, seqs, low, high) != (want, want, 0, want - 1):
            return [f"SUCCESS random job {job} has {n} entries (seq {low}..{high}), not {want}"]
    elif state in ("FAILURE", "REVOKED") and n:
        return [f"{state} job {job} ({code}) has {n} ledger entries"]
    if state == "FAILURE" and not (code == EXPECTED_FAILURE and params.get("type") == "debit"):
        return [f"{kind} job {job} {params} failed with {code}: accepted but not applied"]
    return []


def finish_times(db: Database, ids: list[str]) -> list[float]:
    """Epoch seconds at which each of `ids` finished (only those finished)."""
    rows = db.query(
        "SELECT extract(epoch FROM finished_at) FROM jobs "
        "WHERE id = ANY(%s::uuid[]) AND finished_at IS NOT NULL",
        (ids,),
    )
    return [float(r[0]) for r in rows]


def unfinished_created_before(db: Database, ids: list[str], moment: float) -> list[str]:
    """Those of `ids` accepted before `moment` (epoch seconds) and not finished yet."""
    rows = db.query(
        "SELECT id::text FROM jobs WHERE id = ANY(%s::uuid[]) AND created_at < to_timestamp(%s) "
        "AND state NOT IN ('SUCCESS', 'FAILURE', 'REVOKED')",
        (ids, moment),
    )
    return [r[0] for r in rows]


def created_after(
    db: Database, ids: list[str], moment: float, until: float | None = None
) -> list[str]:
    """Those of `ids` accepted after `moment` (and before `until`; epoch seconds), oldest first."""
    rows = db.query(
        "SELECT id::text FROM jobs WHERE id = ANY(%s::uuid[]) AND created_at > to_timestamp(%s) "
        "AND (%s IS NULL OR created_at < to_timestamp(%s)) ORDER BY created_at",
        (ids, moment, until, until),
    )
    return [r[0] for r in rows]


def doubled(db: Database, ids: list[str]) -> int:
    """Jobs among `ids` with any ledger entry posted more than once (goal: 0)."""
    rows = db.query(
        "SELECT count(DISTINCT job_id) FROM (SELECT job_id, seq FROM ledger_entries "
        "WHERE job_id = ANY(%s::uuid[]) GROUP BY 1, 2 HAVING count(*) > 1) twice",
        (ids,),
    )
    return int(rows[0][0])


def redispatched(db: Database, ids: list[str]) -> int:
    """Jobs among `ids` the sweeps had to publish again (their message was lost)."""
    rows = db.query(
        "SELECT count(*) FROM jobs WHERE id = ANY(%s::uuid[]) AND redispatches > 0", (ids,)
    )
    return int(rows[0][0])


def slowest_job(db: Database, ids: list[str]) -> float:
    """Seconds from accepted to finished of the slowest of `ids`."""
    rows = db.query(
        "SELECT COALESCE(max(extract(epoch FROM finished_at - created_at)), 0) FROM jobs "
        "WHERE id = ANY(%s::uuid[])",
        (ids,),
    )
    return float(rows[0][0])


def api_violations(load: Load, db: Database, ids: list[str], timeout: float = 75.0) -> list[str]:
    """GET /tasks/{id} of every job ends up agreeing with its row's terminal state.

    A status document in Redis may lag the row after Redis lost writes; the
    API confirms a non-terminal document older than 60 s against the row.
    """
    truth = job_states(db, ids)
    pending = [i for i in ids if truth.get(i) in TERMINAL]
    http_ = Http(load.base_url)
    deadline = time.monotonic() + timeout
    violations: list[str] = []
    seen: dict[str, str] = {}
    try:
        while pending:
            left = []
            for task_id in pending:
                token = load.tokens[load.accepted[task_id].user]
                try:
                    status, body = http_.request("GET", f"/api/v1/tasks/{task_id}", token)
                except RequestFailed as exc:
                    return [f"final poll: {exc}"]
                if status != 200:
                    return [f"final poll of {task_id} answered {status}: {body}"]
                seen[task_id] = body["state"]
                if body["state"] != truth[task_id]:
                    left.append(task_id)
            pending = left
            if not pending or time.monotonic() > deadline:
                break
            time.sleep(2.0)
    finally:
        http_.close()
    if pending:
        shown = [f"{i} api={seen[i]} row={truth[i]}" for i in pending]
        violations.append(
            f"{len(pending)} jobs' status still disagrees with the row after {timeout:.0f} s: "
            + _sample(shown)
        )
    return violations
