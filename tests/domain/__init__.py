"""Domain tests: shared/ called directly with real PostgreSQL and Redis, no app, no worker."""
