"""The job message filled into a template equals the serialized envelope, byte for byte."""

from __future__ import annotations

import json
import uuid
from unittest import mock

import pytest

from infra.broker import envelope
from tuning import celery_fast_publish

HEADERS = [
    {"request_id": "0123abcd", "user_id": 5},
    {"request_id": None, "user_id": 2**40},
    {"request_id": 'quote " backslash \\ newline \n é \u2028', "user_id": 1},
    {},
    # A header named like one of Celery's: the template steps aside.
    {"id": "replaced", "user_id": 3},
]


@pytest.mark.parametrize("headers", HEADERS)
def test_template_equals_the_serialized_envelope(headers):
    job_id = str(uuid.uuid4())
    with (
        mock.patch("time.time", return_value=1764612345.123456),
        mock.patch("uuid.uuid4", return_value=uuid.UUID(int=7)),
    ):
        fast = celery_fast_publish.job_message(
            "ledger.transaction", job_id, "ledger", headers, origin="1@h"
        )
        built = celery_fast_publish._job_message_built(
            "ledger.transaction", job_id, "ledger", headers, origin="1@h"
        )
    assert fast == built
    message = json.loads(fast)
    assert message["headers"]["task"] == "ledger.transaction"
    assert message["properties"]["delivery_info"]["routing_key"] == "ledger"
    assert envelope.task_id(fast) == headers.get("id", job_id)


def test_each_message_gets_its_own_delivery_tag_and_time():
    first = json.loads(celery_fast_publish.job_message("t", "a", "q", {}, origin="o"))
    second = json.loads(celery_fast_publish.job_message("t", "a", "q", {}, origin="o"))
    assert first["properties"]["delivery_tag"] != second["properties"]["delivery_tag"]
    assert isinstance(first["headers"]["sent_at"], float)
