"""Per-user notifications in Redis: newest first, capped, expiring, acknowledged."""

from __future__ import annotations

import uuid

from shared.notifications import Notifications


def _store(resources, max_items=5):
    return Notifications(resources.redis, resources.keys, max_items=max_items, ttl_seconds=600)


def test_push_is_newest_first_capped_and_expiring(resources):
    store, user = _store(resources), int(uuid.uuid4().int % 10**9)
    for index in range(8):
        store.push(user, type="job.succeeded", title=f"t{index}", message="m", task_id=None)
    items = store.recent(user)
    assert [item["title"] for item in items] == ["t7", "t6", "t5", "t4", "t3"]
    assert 0 < resources.redis.ttl(resources.keys.notifications(user)) <= 600


def test_mark_read_by_ids_and_all(resources):
    store, user = _store(resources), int(uuid.uuid4().int % 10**9)
    ids = [
        store.push(user, type="job.failed", title="x", message="m", task_id="t")["id"]
        for _ in range(3)
    ]
    assert store.mark_read(user, [ids[0], "not-an-id"]) == 1
    assert {item["id"] for item in store.recent(user, unread_only=True)} == set(ids[1:])
    assert store.mark_read(user, [ids[0]]) == 0  # already read
    assert store.mark_read(user, None) == 2
    assert store.recent(user, unread_only=True) == []
    assert all(item["read"] for item in store.recent(user))


def test_users_do_not_see_each_others_notifications(resources):
    store = _store(resources)
    alice, bob = 10**9 + 1, 10**9 + 2
    store.push(alice, type="job.succeeded", title="mine", message="m", task_id=None)
    assert store.recent(bob) == []
    assert store.mark_read(bob, None) == 0
