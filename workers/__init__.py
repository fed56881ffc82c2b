"""Celery adapter: the app, per-process resources and the task modules."""
