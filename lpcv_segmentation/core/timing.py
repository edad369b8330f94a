"""The one latency timer: block-interleaved rounds, medians in milliseconds.

    from lpcv_segmentation.core.timing import interleaved
    timings = interleaved({"ours": lambda: a.infer(x), "peer": lambda: b.run(y)}, rounds=6)
    timings["ours"].median_ms, timings["ours"].cpu_median_ms

Each round runs every runner in turn for one untimed call and a block of timed calls: drift in
the load of a shared machine touches every runner alike, and the block keeps a runtime's worker
threads awake as a model running in a loop has them (why, with the measurements, is in
docs/BENCHMARKS.md, "How the benches time"). Used by every bench and by the sweep/ablation;
torch-free and Python 3.8 compatible, so both bench/ and training/ import it.
"""
import statistics
import time
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

__all__ = ["BLOCK", "Timing", "time_call", "timed", "interleaved"]

BLOCK = 5  # timed calls of one runner in a row per round (after one untimed call)


class Timing(NamedTuple):
    median_ms: float  # wall clock, median over every timed call
    min_ms: float
    max_ms: float
    runs: int
    cpu_median_ms: float  # CPU time of this process (all its threads) per call

    @classmethod
    def of(cls, wall_ms: List[float], cpu_ms: List[float]) -> "Timing":
        return cls(statistics.median(wall_ms), min(wall_ms), max(wall_ms), len(wall_ms),
                   statistics.median(cpu_ms))


def time_call(run: Callable[[], Any]) -> Tuple[float, float]:
    """(wall ms, process CPU ms) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    return 1000.0 * (time.perf_counter() - wall), 1000.0 * (time.process_time() - cpu)


def timed(run: Callable[[], Any], repeats: int, warmup: int = 2) -> Timing:
    """``warmup`` untimed calls, then ``repeats`` timed calls of one runner in a loop."""
    for _ in range(max(0, warmup)):
        run()
    calls = [time_call(run) for _ in range(max(1, repeats))]
    return Timing.of([w for w, _ in calls], [c for _, c in calls])


def interleaved(runners: Dict[str, Callable[[], Any]], rounds: int, block: int = BLOCK,
                warmup: int = 2, progress: Optional[Callable[[int], None]] = None
                ) -> Dict[str, Timing]:
    """Every runner warmed up ``warmup`` times, then ``rounds`` rounds in which each runner in
    turn makes one untimed call and ``block`` timed calls. {name: Timing over its
    rounds x block timed calls}. ``progress(i)`` is called after round i (1-based)."""
    for run in runners.values():
        for _ in range(max(0, warmup)):
            run()
    calls: Dict[str, List[Tuple[float, float]]] = {name: [] for name in runners}
    for i in range(max(1, rounds)):
        for name, run in runners.items():
            run()  # absorbs the previous runner's threads winding down, wakes this one's
            calls[name].extend(time_call(run) for _ in range(max(1, block)))
        if progress:
            progress(i + 1)
    return {name: Timing.of([w for w, _ in values], [c for _, c in values])
            for name, values in calls.items()}
