"""Conveyor's Python client (httpx) and the `conveyor` command line built on it.

from client import ConveyorClient
with ConveyorClient("http://127.0.0.1:8000", token) as api:
    job = api.submit("transaction", {"type": "credit", "amount": 500})
    final = api.wait(job["task_id"], timeout=60)
"""

from client.core import TERMINAL, ConveyorClient, Event
from client.errors import ApiError, ConveyorError, Unreachable, WaitTimeout

__all__ = [
    "TERMINAL",
    "ApiError",
    "ConveyorClient",
    "ConveyorError",
    "Event",
    "Unreachable",
    "WaitTimeout",
]
