"""Waiting for a job to reach a state, by polling the API with a bound."""

from __future__ import annotations

import time
from typing import Any


def wait_for_state(
    client, headers, task_id: str, states=("SUCCESS", "FAILURE", "REVOKED"), timeout: float = 30.0
) -> dict[str, Any]:
    """Poll GET /tasks/{id} until its state is one of `states`."""
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        response = client.get(f"/api/v1/tasks/{task_id}", headers=headers)
        assert response.status_code == 200, response.get_json()
        body = response.get_json()
        if body["state"] in states:
            return body
        time.sleep(0.05)
    raise AssertionError(f"task {task_id} stuck in {body.get('state')}: {body}")
