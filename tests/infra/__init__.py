"""Tests of infra/: settings, the database plumbing, the request gate."""
