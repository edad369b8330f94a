"""Fixtures: a small synthetic dataset written by training.synth (session-scoped)."""
