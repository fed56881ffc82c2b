"""AI jobs with the default `offline` provider: no network, the right shapes, over HTTP."""

from __future__ import annotations

import uuid

import pytest

from tests.support.polling import wait_for_state

pytestmark = pytest.mark.integration


def test_offline_provider_serves_all_three_kinds_end_to_end(client, make_user, worker):
    _, headers = make_user()
    prompt = f"Solar power for small farms {uuid.uuid4().hex}"
    bodies = {
        "text": {"operation": "summarize"},
        "presentation": {"num_cards": 3, "style": "friendly"},
        "image": {"size": "256x256"},
    }
    results = {}
    for kind, options in bodies.items():
        response = client.post(
            "/api/v1/ai/generate",
            json={"kind": kind, "prompt": prompt, "options": options},
            headers=headers,
        )
        assert response.status_code == 202, response.get_json()
        done = wait_for_state(client, headers, response.get_json()["task_id"])
        assert done["state"] == "SUCCESS", done
        results[kind] = done["result"]
    for result in results.values():
        assert (result["provider"], result["model"], result["from_cache"]) == (
            "offline",
            "offline-1",
            False,
        )
    assert results["text"]["text"]
    assert len(results["presentation"]["cards"]) == 3
    assert all(card["title"] and card["bullets"] for card in results["presentation"]["cards"])
    assert results["image"]["url"].startswith(("https://", "data:"))


@pytest.mark.integration
def test_presentation_reports_progress_per_card_and_text_at_start(
    client, make_user, worker, monkeypatch
):
    from workers.job_run import JobRun

    seen: list[tuple[str, int, str]] = []
    original = JobRun.progress

    def recording(self, percent, message, **kwargs):
        original(self, percent, message, **kwargs)
        # What was reported (a deferred one is written with the next trip).
        seen.append((str(self.job.id), percent, message))

    monkeypatch.setattr(JobRun, "progress", recording)
    _, headers = make_user()
    ids = {}
    for kind, options in (("presentation", {"num_cards": 4}), ("text", {})):
        response = client.post(
            "/api/v1/ai/generate",
            json={"kind": kind, "prompt": f"progress check {kind}", "options": options},
            headers=headers,
        )
        ids[kind] = response.get_json()["task_id"]
    for task_id in ids.values():
        done = wait_for_state(client, headers, task_id)
        assert done["state"] == "SUCCESS" and done["progress"] == 100
    cards = [(p, m) for job, p, m in seen if job == ids["presentation"]]
    card_steps = [p for p, m in cards if m.startswith("Drafted card")]
    assert len(card_steps) == 4 and card_steps == sorted(card_steps)
    assert all(0 < p < 100 for p, _ in cards)
    assert [m for job, _, m in seen if job == ids["text"]][:1] == ["Generating text"]


@pytest.mark.integration
def test_the_started_document_and_first_progress_ride_the_cache_lookup(
    client, make_user, worker, monkeypatch, resources, settings
):
    """One Redis trip fewer per AI job: STARTED and progress 5 go with the cache's lookup."""
    import json

    from shared.ai.cache import AICache
    from shared.jobs.events import EventLog, StreamKeys

    sent_with_lookup: list[list[str]] = []
    original = AICache.get_or_compute

    def spying(self, *args, also=None, **kwargs):
        def queue(pipe):
            before = len(pipe.command_stack)
            settle = also(pipe)
            # Each queued status write is one EVALSHA (no SCRIPT EXISTS trip):
            # name, sha, 6, its six keys, then its document.
            writes = pipe.command_stack[before:]
            assert all(args[0] == "EVALSHA" for args, _options in writes)
            sent_with_lookup.append([json.loads(args[9])["state"] for args, _options in writes])
            assert not pipe.scripts
            return settle

        return original(self, *args, also=queue if also is not None else None, **kwargs)

    monkeypatch.setattr(AICache, "get_or_compute", spying)
    _, headers = make_user()
    response = client.post(
        "/api/v1/ai/generate",
        json={"kind": "text", "prompt": f"ride along {uuid.uuid4().hex}", "options": {}},
        headers=headers,
    )
    task_id = response.get_json()["task_id"]
    assert wait_for_state(client, headers, task_id)["state"] == "SUCCESS"
    assert sent_with_lookup == [["STARTED", "PROGRESS"]]
    events = EventLog(resources.redis, StreamKeys(settings.redis_key_prefix)).job_events(task_id)
    states = [json.loads(event.data)["state"] for event in events]
    assert states[:3] == ["PENDING", "STARTED", "PROGRESS"] and states[-1] == "SUCCESS"
