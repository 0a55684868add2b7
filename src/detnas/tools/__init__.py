"""Measurement tools behind their own commands (latency tables)."""
