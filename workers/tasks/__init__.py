"""Task modules, one per job family; task names are namespaced (`ledger.transaction`)."""
