"""The fair lines' scripts against a real Redis: the order, the caps, the window, idempotence."""

from __future__ import annotations

import dataclasses
import uuid
from collections import Counter

import pytest

from infra.broker.messages import BrokerError, JobMessage
from shared.jobs.fair import FairLines, FairPublisher, Policy


@pytest.fixture
def make_lines(settings, redis_client):
    prefixes = []

    def factory(window: int = 1, ai_cap: int = 0) -> FairLines:
        prefix = f"{settings.redis_key_prefix}fairtest:{uuid.uuid4().hex[:8]}:"
        prefixes.append(prefix)
        return FairLines(
            redis_client,
            dataclasses.replace(
                settings,
                redis_key_prefix=prefix,
                fair_window_ai=window,
                ai_user_concurrency=ai_cap,
            ),
        )

    yield factory
    for prefix in prefixes:
        for key in redis_client.scan_iter(match=f"{prefix}*"):
            redis_client.delete(key)


def _job(user: int, n: int) -> JobMessage:
    return JobMessage("ai.text", f"u{user}-{n}", "ai", {"user_id": user, "request_id": None})


def _submit(lines: FairLines, user: int, count: int, start: int = 0) -> list[JobMessage]:
    return lines.submit("ai", [_job(user, start + n) for n in range(count)])


def _drain(lines: FairLines, first: list[JobMessage]) -> list[str]:
    """Run every job to its end, one finish at a time; the ids in the order released."""
    order = [m.job_id for m in first]
    pending = list(order)
    while pending:
        done = pending.pop(0)
        more = lines.finish("ai", [done])
        order += [m.job_id for m in more]
        pending += [m.job_id for m in more]
    return order


def _users(order: list[str]) -> list[str]:
    return [job.split("-")[0] for job in order]


def test_two_users_alternate_and_each_keeps_its_own_order(make_lines):
    lines = make_lines(window=1)
    first = _submit(lines, 1, 4) + _submit(lines, 2, 4)
    order = _drain(lines, first)
    assert _users(order) == ["u1", "u2"] * 4
    assert [j for j in order if j.startswith("u1")] == [f"u1-{n}" for n in range(4)]
    assert [j for j in order if j.startswith("u2")] == [f"u2-{n}" for n in range(4)]


def test_weights_three_to_one_give_three_releases_for_one(make_lines):
    lines = make_lines(window=1)
    lines.set_policy("ai", 1, Policy(weight=3))
    first = _submit(lines, 1, 30) + _submit(lines, 2, 30)
    order = _drain(lines, first)
    # While both wait, every window of four releases holds three of user 1's.
    for start in range(0, 36, 4):
        assert Counter(_users(order[start : start + 4])) == {"u1": 3, "u2": 1}, order


def test_a_newcomer_is_released_next_however_long_the_others_lines_are(make_lines):
    lines = make_lines(window=2)
    released = [m.job_id for m in _submit(lines, 1, 100)]
    for user in range(2, 9):
        released += [m.job_id for m in _submit(lines, user, 100)]
    assert released == ["u1-0", "u1-1"]  # the window is full
    assert _submit(lines, 9, 1) == []
    # The next free slot goes to the newcomer, before the busy users' next jobs.
    assert [m.job_id for m in lines.finish("ai", ["u1-0"])] == ["u9-0"]


def test_a_user_who_was_just_served_cannot_jump_ahead_by_coming_back(make_lines):
    lines = make_lines(window=1)
    _submit(lines, 1, 1)  # released at once
    _submit(lines, 2, 3)
    _submit(lines, 3, 3)
    first = lines.finish("ai", ["u1-0"])
    # User 1 comes back with more work: behind the two who waited.
    _submit(lines, 1, 3, start=1)
    order = _drain(lines, first)
    # Each who waited is served once more before user 1's second job.
    assert _users(order[:5]) == ["u3", "u2", "u3", "u2", "u1"]


def test_a_cap_holds_exactly_and_releases_the_next_on_finish(make_lines):
    lines = make_lines(window=10, ai_cap=2)
    released = [m.job_id for m in _submit(lines, 1, 6)]
    assert released == ["u1-0", "u1-1"]
    assert lines.running("ai", 1) == 2
    # A capped user's jobs do not hold slots: another user gets them.
    assert [m.job_id for m in _submit(lines, 2, 3)] == ["u2-0", "u2-1"]
    assert lines.users_waiting("ai") == 2
    assert lines.position("ai", 1, "u1-2").reason == "user_cap"
    assert [m.job_id for m in lines.finish("ai", ["u1-0"])] == ["u1-2"]
    assert lines.running("ai", 1) == 2


def test_a_per_user_cap_overrides_the_default(make_lines):
    lines = make_lines(window=10, ai_cap=1)
    lines.set_policy("ai", 1, Policy(weight=1, max_running=3))
    assert len(_submit(lines, 1, 5)) == 3
    assert len(_submit(lines, 2, 5)) == 1


def test_finish_is_idempotent(make_lines):
    lines = make_lines(window=1)
    _submit(lines, 1, 3)
    assert [m.job_id for m in lines.finish("ai", ["u1-0"])] == ["u1-1"]
    assert lines.finish("ai", ["u1-0"]) == []  # a duplicate frees nothing
    assert lines.finish("ai", ["never-released"]) == []
    assert lines.released("ai") == ["u1-1"]
    assert lines.running("ai", 1) == 1


def test_the_window_is_the_advertised_slots(make_lines):
    lines = make_lines(window=0)  # from the workers
    lines.advertise("ai", "w1", 3, now_ms=10**13)
    lines.advertise("ai", "w2", 2, now_ms=10**13)
    assert len(_submit(lines, 1, 20)) == 5
    lines.withdraw("ai", "w2")
    assert lines.finish("ai", ["u1-0", "u1-1", "u1-2"]) != []
    assert len(lines.released("ai")) == 3
    assert lines.waiting("ai") == 20 - 5 - 1


def test_a_resubmitted_job_is_not_doubled(make_lines):
    lines = make_lines(window=1)
    first = _submit(lines, 1, 2)
    assert [m.job_id for m in first] == ["u1-0"]
    # The sweep re-publishes both: the released one again, the waiting one stays put.
    again = lines.submit("ai", [_job(1, 0), _job(1, 1)])
    assert [m.job_id for m in again] == ["u1-0"]
    assert lines.waiting("ai") == 1
    assert lines.running("ai", 1) == 1


def test_cancel_takes_a_waiting_job_out_and_position_counts_the_fair_order(make_lines):
    lines = make_lines(window=1)
    _submit(lines, 1, 10)  # u1-0 released
    _submit(lines, 2, 3)
    # u2-2 comes after u2-0, u2-1 and two of u1's jobs (the order alternates, u2 first).
    assert lines.position("ai", 2, "u2-2").ahead == 2 + 2
    assert lines.position("ai", 2, "u2-0").ahead == 0
    assert lines.position("ai", 1, "u1-3").ahead == 2 + 3
    assert lines.position("ai", 2, "u2-0").reason == "worker"
    assert lines.remove("ai", 2, "u2-0")
    assert not lines.remove("ai", 2, "u2-0")
    assert lines.position("ai", 2, "u2-0") is None
    assert lines.waiting("ai") == 9 + 2


class _Broker:
    """A broker stand-in behind the fair publisher: records what reached it, or refuses."""

    def __init__(self, refuse: bool = False) -> None:
        self.refuse = refuse
        self.published: list[str] = []

    def publish_many(self, messages, extra=None):
        if self.refuse:
            return [BrokerError("down")] * len(messages), []
        self.published += [m.job_id for m in messages]
        return [None] * len(messages), []

    def shares_redis(self, url: str) -> bool:
        return False

    def close(self) -> None:
        pass


def test_the_publisher_releases_in_turn_and_a_refusing_broker_refuses_the_batch(make_lines):
    lines = make_lines(window=2)
    broker = _Broker()
    publisher = FairPublisher(broker, lines)
    errors, _ = publisher.publish_many([_job(1, n) for n in range(3)])
    assert errors == [None, None, None]  # accepted: two on the broker, one in its line
    assert broker.published == ["u1-0", "u1-1"]
    publisher.publish_released(lines.finish("ai", ["u1-0"]))
    assert broker.published[-1] == "u1-2"
    # The broker goes down: the batch is refused and leaves no trace in the lines.
    broker.refuse = True
    lines.finish("ai", ["u1-1"])  # a free slot, so the new job is released at once
    errors, _ = publisher.publish_many([_job(2, 0), _job(2, 1)])
    assert all(isinstance(error, BrokerError) for error in errors)
    assert lines.waiting("ai") == 0 and lines.running("ai", 2) == 0
    assert lines.released("ai") == ["u1-2"]


def test_without_the_status_redis_jobs_go_straight_to_the_broker(settings):
    import redis

    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    broker = _Broker()
    publisher = FairPublisher(broker, FairLines(dead, settings))
    errors, _ = publisher.publish_many([_job(1, 0), _job(2, 0)])
    assert errors == [None, None] and broker.published == ["u1-0", "u2-0"]
