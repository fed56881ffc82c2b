"""Access to the app's per-process resources and Celery producer from request code."""

from __future__ import annotations

from celery import Celery
from flask import current_app

from api.publisher import Publisher
from shared.resources import Resources


def resources() -> Resources:
    return current_app.extensions["conveyor"]


def celery_producer() -> Celery:
    return current_app.extensions["conveyor.celery"]


def publisher() -> Publisher:
    return current_app.extensions["conveyor.publisher"]
