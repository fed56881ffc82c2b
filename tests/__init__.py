"""Conveyor test suite."""
