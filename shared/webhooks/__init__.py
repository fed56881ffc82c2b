"""Completion webhooks: endpoints, the deliveries a job's outcome creates, signing and sending.

`from shared import webhooks` gives the surface the API and workers use; the
submodules say who owns what: `endpoints` registration and the delivery log,
`deliveries` a finished job's deliveries and their attempts, `signing`
Standard Webhooks' signatures, `urls` which targets are allowed, `sender` the
one HTTP POST of an attempt.
"""

from shared.webhooks.deliveries import (
    STATE_EVENTS,
    PlannedAttempt,
    PublishDelivery,
    WebhookOutbox,
    claim_attempt,
    event_payload,
    next_attempt,
    record_attempt,
    record_deliveries,
    retry_delay,
)
from shared.webhooks.endpoints import (
    EVENTS,
    LOG_ATTEMPTS_SHOWN,
    MAX_ENDPOINTS_PER_USER,
    TooManyEndpoints,
    create_endpoint,
    delete_endpoint,
    endpoint_document,
    list_deliveries,
    list_endpoints,
    parse_id,
)

__all__ = [
    "EVENTS",
    "LOG_ATTEMPTS_SHOWN",
    "MAX_ENDPOINTS_PER_USER",
    "STATE_EVENTS",
    "PlannedAttempt",
    "PublishDelivery",
    "TooManyEndpoints",
    "WebhookOutbox",
    "claim_attempt",
    "create_endpoint",
    "delete_endpoint",
    "endpoint_document",
    "event_payload",
    "list_deliveries",
    "list_endpoints",
    "next_attempt",
    "parse_id",
    "record_attempt",
    "record_deliveries",
    "retry_delay",
]
