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

    def recording(self, percent, message):
        original(self, percent, message)
        seen.append((str(self.job.id), self.status["progress"], message))

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
