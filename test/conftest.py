"""Shared fixtures live in topic modules so that each is owned by one part of the code."""
import os

import pytest

# Keep every test process to the 2 cores CI has, and deterministic.
os.environ.setdefault("OMP_NUM_THREADS", "2")

from fixtures_data import *  # noqa: E402,F401,F403  synthetic dataset on disk
from fixtures_model import *  # noqa: E402,F401,F403  tiny checkpoint and ONNX model
from fixtures_package import *  # noqa: E402,F401,F403  the package built in a colcon workspace


@pytest.fixture
def one_torch_thread():
    """Run torch on one thread: on a busy machine two OpenMP threads that keep being
    descheduled spin-wait for each other and run several times slower than one."""
    import torch  # only the tests that ask for it pay for the import
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
