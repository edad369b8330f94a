"""Fixtures: a tiny trained-shape checkpoint and its ONNX export (session-scoped)."""
