"""Cached reads: the read cache with its single-flight (`store`), and the beat job warming it."""
