"""Test doubles: real servers on loopback that stand in for external services."""
