"""The one latency timer: what it calls, in which order, and what it reports."""
from lpcv_segmentation.core.timing import interleaved, timed


def test_rounds_run_every_runner_in_turn_in_blocks():
    calls = []
    runners = {name: (lambda name=name: calls.append(name)) for name in ("a", "b")}
    result = interleaved(runners, rounds=3, block=4, warmup=2)
    assert calls[:4] == ["a", "a", "b", "b"]  # warm-up
    # each round: one untimed and four timed calls of a, then of b
    assert calls[4:] == (["a"] * 5 + ["b"] * 5) * 3
    for timing in result.values():
        assert timing.runs == 12
        assert 0 <= timing.min_ms <= timing.median_ms <= timing.max_ms
        assert timing.cpu_median_ms >= 0


def test_timed_measures_the_call():
    import time
    timing = timed(lambda: time.sleep(0.01), repeats=3, warmup=0)
    assert timing.runs == 3 and 9.0 <= timing.median_ms < 1000.0
    assert timing.cpu_median_ms < timing.median_ms  # sleeping costs no CPU
