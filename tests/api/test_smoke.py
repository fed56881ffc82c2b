"""End-to-end smoke: submit a credit over HTTP, a real worker posts it, poll sees SUCCESS."""

from tests.support.polling import wait_for_state


def test_credit_round_trip(client, make_user, worker):
    _, headers = make_user()
    response = client.post(
        "/api/v1/transactions", json={"type": "credit", "amount": 500}, headers=headers
    )
    assert response.status_code == 202, response.get_json()
    body = response.get_json()
    done = wait_for_state(client, headers, body["task_id"])
    assert done["state"] == "SUCCESS", done
    assert done["result"]["balance"] == 500
    wallet = client.get("/api/v1/wallet", headers=headers).get_json()
    assert wallet["balance"] == 500
