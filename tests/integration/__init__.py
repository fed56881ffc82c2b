"""Integration tests: jobs through real Celery workers and real brokers."""
