"""Conveyor's docker compose shape on this machine: engine, stand-in base images, up/down, check."""
