"""Test users: register, log in, fund a wallet through the domain."""

from __future__ import annotations

from shared import ledger

PASSWORD = "correct horse battery"


def register_and_login(client, username: str) -> tuple[int, dict[str, str]]:
    created = client.post(
        "/api/v1/auth/register", json={"username": username, "password": PASSWORD}
    )
    assert created.status_code == 201, created.get_json()
    login = client.post("/api/v1/auth/login", json={"username": username, "password": PASSWORD})
    assert login.status_code == 200, login.get_json()
    return created.get_json()["id"], {"Authorization": f"Bearer {login.get_json()['access_token']}"}


def fund(resources, user_id: int, amount: int) -> None:
    """Credit a wallet directly through the domain (no job)."""
    with resources.sessions.begin() as session:
        ledger.post(
            session, user_id=user_id, entry_type="credit", amount=amount, description="test funding"
        )
