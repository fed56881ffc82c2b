"""Tests of tuning/: each adjustment against the library it adjusts, the switch and the tripwire."""
