"""Conveyor's domain: plain functions and classes shared by api/ and workers/."""
