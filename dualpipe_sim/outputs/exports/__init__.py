"""Exports: pure functions of a trace (Chrome trace JSON, timelines)."""
