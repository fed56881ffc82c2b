"""WSGI entry point of the `events` process: `api.events_wsgi:app` (gunicorn, gevent worker)."""

from api.events_app import create_events_app

app = create_events_app()
