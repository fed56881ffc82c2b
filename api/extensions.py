"""Access to the app's per-process resources and broker publisher from request code."""

from __future__ import annotations

from flask import current_app

from shared.broker.publish import Publisher
from shared.resources import Resources


def resources() -> Resources:
    return current_app.extensions["conveyor"]


def publisher() -> Publisher:
    return current_app.extensions["conveyor.publisher"]
