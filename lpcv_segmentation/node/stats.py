"""Latency, rate and frame accounting for the segmentation node, and its diagnostic level.

Pure Python (no rclpy): the node feeds events in, and reads one summary that becomes both
the /diagnostics message and the periodic log line. Times are seconds from a monotonic
clock passed in by the caller, so the aggregator is deterministic under test.
"""
import collections
import threading
from typing import Deque, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

# The stages of one frame, in order; "end_to_end" runs from the frame's header stamp to
# the moment its outputs were published.
# "postprocess" is Segmenter.segment's own (argmax, resize back); "outputs" what the node
# builds after it (detections, colour mask, overlay), only for outputs someone listens to.
STAGES: Tuple[str, ...] = ("conversion", "preprocess", "inference", "postprocess", "outputs",
                           "publish")
OPTIONAL_OUTPUTS: Tuple[str, ...] = ("color", "overlay", "detections")
END_TO_END = "end_to_end"

OK, WARN, ERROR = 0, 1, 2  # the diagnostic_msgs/DiagnosticStatus levels
LEVEL_NAMES = {OK: "OK", WARN: "WARN", ERROR: "ERROR"}


class Thresholds(NamedTuple):
    """When the node's status turns WARN or ERROR (documented with the parameters)."""
    latency_warn_ms: float = 500.0  # end-to-end p95 above this: WARN
    latency_error_ms: float = 2000.0  # end-to-end p95 above this: ERROR
    min_output_rate_hz: float = 1.0  # frames arriving but fewer outputs per second: WARN
    rejected_warn_ratio: float = 0.0  # share of received frames rejected above this: WARN
    rejected_error_ratio: float = 0.5  # ... above this: ERROR
    input_timeout_s: float = 3.0  # no frame for this long: WARN
    memory_warn_mb: float = 2000.0  # resident memory above this: WARN


class WindowedSeries:
    """Values with time stamps, kept for ``window_s`` seconds: percentiles and a rate."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._items: Deque[Tuple[float, float]] = collections.deque()

    def add(self, now: float, value: float = 0.0) -> None:
        self._items.append((now, value))
        self._expire(now)

    def _expire(self, now: float) -> None:
        while self._items and self._items[0][0] < now - self.window_s:
            self._items.popleft()

    def count(self, now: float) -> int:
        self._expire(now)
        return len(self._items)

    def rate_hz(self, now: float, elapsed_s: Optional[float] = None) -> float:
        """Events per second over the window, or over ``elapsed_s`` when that is shorter
        (so a node that started 2 s ago does not report a fifth of its rate)."""
        span = self.window_s if elapsed_s is None else min(self.window_s, elapsed_s)
        return self.count(now) / max(span, 1e-3)

    def percentiles(self, now: float) -> Optional[Dict[str, float]]:
        """{"p50", "p95", "max"} over the window, or None when it is empty."""
        self._expire(now)
        if not self._items:
            return None
        values = np.array([v for _, v in self._items], dtype=np.float64)
        p50, p95 = np.percentile(values, [50, 95])
        return {"p50": float(p50), "p95": float(p95), "max": float(values.max())}


def resident_memory_mb(status_path: str = "/proc/self/status") -> Optional[float]:
    """This process's resident set size (VmRSS) in MiB, or None where /proc is missing."""
    try:
        with open(status_path) as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0  # the kernel reports kB
    except OSError:
        return None
    return None


class NodeStats:
    """Thread-safe counters and windows: the subscription callback and the worker both write.

    Accounting: every frame that reaches the callback is ``received``; it then ends as exactly
    one of ``processed`` (outputs published), ``dropped`` (replaced by a newer frame before the
    worker took it) or ``rejected`` (bad message), or is still pending / in progress. Frames
    that reach it while the node is not active (loading, or an inactive lifecycle node) are
    only counted, as ``while_inactive``: they are not received for segmentation.
    """

    def __init__(self, start: float, window_s: float = 5.0) -> None:
        self.start = start
        self.window_s = window_s
        self._lock = threading.Lock()
        self.received = 0
        self.processed = 0
        self.dropped = 0
        self.rejected = 0
        self.while_inactive = 0
        self.rejected_by_reason: Dict[str, int] = collections.Counter()
        self.built: Dict[str, int] = {name: 0 for name in OPTIONAL_OUTPUTS}
        self.last_received: Optional[float] = None
        self._received = WindowedSeries(window_s)
        self._processed = WindowedSeries(window_s)
        self._rejected = WindowedSeries(window_s)
        self._latency = {name: WindowedSeries(window_s) for name in STAGES + (END_TO_END,)}

    def frame_received(self, now: float) -> None:
        with self._lock:
            self.received += 1
            self.last_received = now
            self._received.add(now)

    def frame_while_inactive(self) -> None:
        with self._lock:
            self.while_inactive += 1

    def frame_dropped(self) -> None:
        with self._lock:
            self.dropped += 1

    def frame_rejected(self, now: float, reason: str) -> None:
        with self._lock:
            self.rejected += 1
            self.rejected_by_reason[reason] += 1
            self._rejected.add(now)

    def frame_processed(self, now: float, stage_ms: Dict[str, float],
                        end_to_end_ms: Optional[float], built: Sequence[str] = ()) -> None:
        """One frame's outputs are out; ``end_to_end_ms`` is None when the frame had no stamp;
        ``built``: the optional outputs computed for it (OPTIONAL_OUTPUTS names)."""
        with self._lock:
            self.processed += 1
            for name in built:
                self.built[name] += 1
            self._processed.add(now)
            for name in STAGES:
                if name in stage_ms:
                    self._latency[name].add(now, stage_ms[name])
            if end_to_end_ms is not None:
                self._latency[END_TO_END].add(now, end_to_end_ms)

    def summary(self, now: float) -> Dict[str, object]:
        """Counters, rates (Hz over the window), latency percentiles (ms) and memory."""
        with self._lock:
            return {
                "window_s": self.window_s,
                "frames_received": self.received,
                "frames_processed": self.processed,
                "frames_dropped": self.dropped,
                "frames_rejected": self.rejected,
                "frames_while_inactive": self.while_inactive,
                "rejected_by_reason": dict(self.rejected_by_reason),
                "outputs_built": dict(self.built),
                "input_rate_hz": self._received.rate_hz(now, now - self.start),
                "output_rate_hz": self._processed.rate_hz(now, now - self.start),
                "window_received": self._received.count(now),
                "window_rejected": self._rejected.count(now),
                "seconds_since_input": (None if self.last_received is None
                                        else now - self.last_received),
                "latency_ms": {name: series.percentiles(now)
                               for name, series in self._latency.items()},
                "resident_memory_mb": resident_memory_mb(),
            }


def assess(summary: Dict[str, object], thresholds: Thresholds) -> Tuple[int, str]:
    """(level, message) of a summary: the worst finding wins; the message lists them all."""
    findings: List[Tuple[int, str]] = []
    since_input = summary["seconds_since_input"]
    if since_input is None:
        findings.append((WARN, "no frame received yet"))
    elif since_input > thresholds.input_timeout_s:
        findings.append((WARN, "no frame for %.1f s" % since_input))
    received = summary["window_received"]
    if received:
        rejected_ratio = summary["window_rejected"] / float(received)
        if rejected_ratio > thresholds.rejected_error_ratio:
            findings.append((ERROR, "%.0f%% of frames rejected" % (100 * rejected_ratio)))
        elif rejected_ratio > thresholds.rejected_warn_ratio:
            findings.append((WARN, "%.0f%% of frames rejected" % (100 * rejected_ratio)))
        if summary["output_rate_hz"] < thresholds.min_output_rate_hz:
            findings.append((WARN, "output rate %.2f Hz below %.2f Hz"
                             % (summary["output_rate_hz"], thresholds.min_output_rate_hz)))
    end_to_end = summary["latency_ms"].get(END_TO_END)
    if end_to_end is not None:
        if end_to_end["p95"] > thresholds.latency_error_ms:
            findings.append((ERROR, "end-to-end p95 %.0f ms above %.0f ms"
                             % (end_to_end["p95"], thresholds.latency_error_ms)))
        elif end_to_end["p95"] > thresholds.latency_warn_ms:
            findings.append((WARN, "end-to-end p95 %.0f ms above %.0f ms"
                             % (end_to_end["p95"], thresholds.latency_warn_ms)))
    memory = summary["resident_memory_mb"]
    if memory is not None and memory > thresholds.memory_warn_mb:
        findings.append((WARN, "resident memory %.0f MiB above %.0f MiB"
                         % (memory, thresholds.memory_warn_mb)))
    if not findings:
        return OK, "running"
    level = max(level for level, _ in findings)
    return level, "; ".join(text for _, text in findings)


def key_values(summary: Dict[str, object]) -> List[Tuple[str, str]]:
    """The summary flattened to (key, value) strings, for DiagnosticStatus.values."""
    pairs: List[Tuple[str, str]] = []
    for key in ("frames_received", "frames_processed", "frames_dropped", "frames_rejected",
                "frames_while_inactive"):
        pairs.append((key, str(summary[key])))
    for reason, count in sorted(summary["rejected_by_reason"].items()):
        pairs.append(("rejected: " + reason, str(count)))
    for name, count in summary["outputs_built"].items():
        pairs.append(("frames_with_%s" % name, str(count)))
    # What the level is assessed from, so that a reader can check it from the message alone.
    pairs.append(("window_received", str(summary["window_received"])))
    pairs.append(("window_rejected", str(summary["window_rejected"])))
    since = summary["seconds_since_input"]
    pairs.append(("seconds_since_input", "n/a" if since is None else "%.2f" % since))
    pairs.append(("input_rate_hz", "%.2f" % summary["input_rate_hz"]))
    pairs.append(("output_rate_hz", "%.2f" % summary["output_rate_hz"]))
    for stage, stats in summary["latency_ms"].items():
        for name in ("p50", "p95", "max"):
            value = "n/a" if stats is None else "%.2f" % stats[name]
            pairs.append(("latency_%s_%s_ms" % (stage, name), value))
    memory = summary["resident_memory_mb"]
    pairs.append(("resident_memory_mb", "n/a" if memory is None else "%.1f" % memory))
    pairs.append(("window_s", "%.1f" % summary["window_s"]))
    return pairs


def log_line(summary: Dict[str, object], level: int, message: str) -> str:
    """One line for the node's log: what an operator needs to see at a glance."""
    def p(stage: str, key: str = "p50") -> str:
        stats = summary["latency_ms"].get(stage)
        return "-" if stats is None else "%.1f" % stats[key]

    memory = summary["resident_memory_mb"]
    return ("%s (%s): in %.1f Hz, out %.1f Hz; frames received %d processed %d dropped %d "
            "rejected %d; p50 ms conv %s pre %s inf %s post %s out %s pub %s; end-to-end p50 %s "
            "p95 %s max %s ms; rss %s MiB"
            % (LEVEL_NAMES[level], message, summary["input_rate_hz"], summary["output_rate_hz"],
               summary["frames_received"], summary["frames_processed"],
               summary["frames_dropped"], summary["frames_rejected"],
               p("conversion"), p("preprocess"), p("inference"), p("postprocess"), p("outputs"),
               p("publish"),
               p(END_TO_END), p(END_TO_END, "p95"), p(END_TO_END, "max"),
               "-" if memory is None else "%.0f" % memory))
