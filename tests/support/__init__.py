"""Test support, one module per kind of help (accounts, polling, workers, processes...)."""
