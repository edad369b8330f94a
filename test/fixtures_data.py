"""Fixtures: a small synthetic dataset written by training.synth (session-scoped)."""
from pathlib import Path

import pytest

__all__ = ["synth_dataset", "SYNTH_COUNT", "SYNTH_SIZE", "SYNTH_SEED", "SYNTH_VAL_FRACTION"]

# The fixture dataset: 24 train + 8 val scenes of 128 px, written once per test session.
SYNTH_COUNT = 32
SYNTH_SIZE = 128
SYNTH_SEED = 0
SYNTH_VAL_FRACTION = 0.25


@pytest.fixture(scope="session")
def synth_dataset(tmp_path_factory) -> Path:
    """Root of a tiny synthetic dataset in the organisers' layout:
    ``IMG/{train,val}/*.png`` with mono label PNGs in ``GT/{train,val}/``."""
    from training.synth import write_dataset

    root = tmp_path_factory.mktemp("synth_dataset")
    return write_dataset(root, count=SYNTH_COUNT, size=SYNTH_SIZE, seed=SYNTH_SEED,
                         val_fraction=SYNTH_VAL_FRACTION, progress=False)
