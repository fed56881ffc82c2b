"""Operational entry points: migrate, devstack."""
