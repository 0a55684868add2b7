"""Configs: the YAML loader, every stage's schema and the run folder's names and rules."""
