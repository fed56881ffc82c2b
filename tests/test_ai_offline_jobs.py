"""AI jobs with the default `offline` provider: no network, the right shapes, over HTTP."""

from __future__ import annotations

import uuid

import pytest

from tests.support import wait_for_state

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
