"""Timing helpers shared by the benches: thread setting, warm-up, medians of repeated runs.

    from common import set_threads, interleaved_medians, timed
    set_threads(2)                          # before the first torch/onnxruntime work
    ms = interleaved_medians({"eager": f, "ort": g}, rounds=10, warmup=2)

Latencies are medians in milliseconds (robust to the odd slow call on a shared machine), of
the wall clock and of the process's CPU time. On a machine busier than its cores, multi-threaded
wall times suffer unevenly (a thread pool waits at every barrier for a descheduled thread, and
PyTorch eager has many more barriers per forward pass than ONNX Runtime), while the CPU time
of a single-threaded run stays close to the work done: compare back ends on it there.
``interleaved_medians`` times every runner once per round, in turn, so that drift in the
machine's load touches all of them alike; ratios between them are what the benches report.
"""
import os
import statistics
import time
from typing import Any, Callable, Dict, List, NamedTuple, Optional

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


class Timing(NamedTuple):
    median_ms: float  # wall clock
    min_ms: float
    max_ms: float
    runs: int
    cpu_median_ms: float  # CPU time of this process (all its threads) per call

    @classmethod
    def of(cls, samples_ms: List[float], cpu_ms: Optional[List[float]] = None) -> "Timing":
        cpu = statistics.median(cpu_ms) if cpu_ms else float("nan")
        return cls(statistics.median(samples_ms), min(samples_ms), max(samples_ms),
                   len(samples_ms), cpu)


def _call(run: Callable[[], Any]) -> "tuple":
    """(wall ms, process CPU ms) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    return 1000.0 * (time.perf_counter() - wall), 1000.0 * (time.process_time() - cpu)


def timed(run: Callable[[], Any], repeats: int, warmup: int = 2) -> Timing:
    """``warmup`` untimed calls, then the timing of ``repeats`` calls of ``run``."""
    for _ in range(warmup):
        run()
    calls = [_call(run) for _ in range(max(1, repeats))]
    return Timing.of([w for w, _ in calls], [c for _, c in calls])


def interleaved(runners: Dict[str, Callable[[], Any]], rounds: int, warmup: int = 2,
                progress: Optional[Callable[[int], None]] = None) -> Dict[str, Timing]:
    """Each runner warmed up ``warmup`` times, then timed once per round, in turn."""
    for run in runners.values():
        for _ in range(warmup):
            run()
    calls: Dict[str, List[tuple]] = {name: [] for name in runners}
    for i in range(max(1, rounds)):
        for name, run in runners.items():
            calls[name].append(_call(run))
        if progress:
            progress(i + 1)
    return {name: Timing.of([w for w, _ in values], [c for _, c in values])
            for name, values in calls.items()}


def interleaved_medians(runners: Dict[str, Callable[[], Any]], rounds: int,
                        warmup: int = 2) -> Dict[str, float]:
    """Median milliseconds per call of each runner (see ``interleaved``)."""
    return {name: t.median_ms for name, t in interleaved(runners, rounds, warmup).items()}


def load_average() -> Optional[float]:
    """The 1-minute load average, to print beside timings taken on a shared machine."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None
