"""What the benches share around the timer: thread setting and the load average.

    from common import set_threads
    from lpcv_segmentation.core.timing import interleaved
    set_threads(2)                          # before the first torch/onnxruntime work
    timings = interleaved({"eager": f, "ort": g}, rounds=6)

The timer itself is ``lpcv_segmentation.core.timing`` (block-interleaved rounds, medians of the wall
clock and of the process's CPU time), imported from there by the benches as by training's
sweep and ablation.
"""
import os
from typing import Optional

THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def set_threads(threads: int) -> None:
    """Use ``threads`` intra-op threads in PyTorch (if imported or importable) and in OpenMP
    libraries started after this call. ONNX Runtime takes its count per session
    (``Segmenter(..., threads=threads)``)."""
    for name in THREAD_ENV:
        os.environ[name] = str(threads)
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(int(threads))


def load_average() -> Optional[float]:
    """The 1-minute load average, to print beside timings taken on a shared machine."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None
