"""Shared fixtures live in topic modules so that each is owned by one part of the code."""
import os

# Keep every test process to the 2 cores CI has, and deterministic.
os.environ.setdefault("OMP_NUM_THREADS", "2")

from fixtures_data import *  # noqa: E402,F401,F403  synthetic dataset on disk
from fixtures_model import *  # noqa: E402,F401,F403  tiny checkpoint and ONNX model
