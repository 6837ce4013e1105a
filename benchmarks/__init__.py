"""Benchmarks run by hand (``python -m benchmarks.event_log``), never by the test suite."""
