"""`make bench`: Conveyor's hot paths measured against a naive Flask + Celery baseline."""
