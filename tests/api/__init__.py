"""API tests: the Flask app from the outside (its test client), real PostgreSQL and Redis."""
