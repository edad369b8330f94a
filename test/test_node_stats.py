"""node_stats and node_pipeline.LatestFrame: the pure parts of the node's bookkeeping."""
import threading

import pytest

from lpcv_segmentation.node.pipeline import LatestFrame
from lpcv_segmentation.node.stats import (END_TO_END, ERROR, OK, STAGES, WARN, NodeStats,
                                          Thresholds, WindowedSeries, assess, key_values,
                                          log_line, resident_memory_mb)


def test_window_percentiles_and_expiry():
    series = WindowedSeries(window_s=10.0)
    for i in range(1, 101):
        series.add(now=float(i) * 0.01, value=float(i))
    stats = series.percentiles(now=1.0)
    assert stats["p50"] == pytest.approx(50.5)
    assert stats["p95"] == pytest.approx(95.05)
    assert stats["max"] == 100.0
    assert series.percentiles(now=20.0) is None  # all expired
    assert series.count(now=20.0) == 0


def test_rate_uses_elapsed_time_while_the_window_fills():
    series = WindowedSeries(window_s=10.0)
    for i in range(20):
        series.add(now=i * 0.1)
    assert series.rate_hz(now=2.0, elapsed_s=2.0) == pytest.approx(10.0)
    assert series.rate_hz(now=2.0) == pytest.approx(2.0)


def _fed_stats():
    stats = NodeStats(start=0.0, window_s=5.0)
    for i in range(10):
        stats.frame_received(now=i * 0.1)
    stats.frame_dropped()
    stats.frame_dropped()
    stats.frame_while_inactive()
    stats.frame_rejected(now=0.5, reason="data_length")
    for i in range(7):
        stats.frame_processed(now=0.1 * i + 0.05,
                              stage_ms={name: 1.0 + i for name in STAGES},
                              end_to_end_ms=10.0 * (i + 1))
    return stats


def test_summary_counts_rates_and_latency():
    summary = _fed_stats().summary(now=1.0)
    assert (summary["frames_received"], summary["frames_processed"], summary["frames_dropped"],
            summary["frames_rejected"]) == (10, 7, 2, 1)
    assert summary["frames_while_inactive"] == 1  # beside the received ones, not among them
    assert summary["rejected_by_reason"] == {"data_length": 1}
    assert summary["input_rate_hz"] == pytest.approx(10.0)
    assert summary["output_rate_hz"] == pytest.approx(7.0)
    assert summary["latency_ms"][END_TO_END]["max"] == 70.0
    assert summary["latency_ms"]["inference"]["p50"] == pytest.approx(4.0)
    assert summary["resident_memory_mb"] > 10.0


def test_levels_against_thresholds():
    summary = _fed_stats().summary(now=1.0)
    relaxed = Thresholds(rejected_warn_ratio=0.5, latency_warn_ms=1000.0)
    assert assess(summary, relaxed) == (OK, "running")
    level, message = assess(summary, Thresholds())  # 1 of 10 rejected > 0
    assert level == WARN and "rejected" in message
    level, message = assess(summary, relaxed._replace(latency_warn_ms=20.0,
                                                      latency_error_ms=50.0))
    assert level == ERROR and "end-to-end" in message
    level, message = assess(summary, relaxed._replace(rejected_error_ratio=0.05))
    assert level == ERROR
    level, message = assess(summary, relaxed._replace(memory_warn_mb=1.0))
    assert level == WARN and "memory" in message
    late = _fed_stats().summary(now=4.5)  # frames stopped 3.6 s ago
    level, message = assess(late, relaxed)
    assert level == WARN and "no frame for" in message
    fresh = NodeStats(start=0.0).summary(now=0.5)
    assert assess(fresh, relaxed) == (WARN, "no frame received yet")


def test_key_values_and_log_line_carry_the_figures():
    summary = _fed_stats().summary(now=1.0)
    values = dict(key_values(summary))
    assert values["frames_dropped"] == "2"
    assert values["frames_while_inactive"] == "1"
    assert values["rejected: data_length"] == "1"
    for stage in STAGES + (END_TO_END,):
        assert "latency_%s_p95_ms" % stage in values
    line = log_line(summary, WARN, "something")
    assert line.startswith("WARN (something)") and "dropped 2" in line


def test_resident_memory_reads_proc():
    assert resident_memory_mb() > 1.0
    assert resident_memory_mb("/nonexistent/status") is None


def test_latest_frame_keeps_only_the_newest():
    slot = LatestFrame()
    assert slot.put(1) is False
    assert slot.put(2) is True  # 1 was never taken: dropped
    assert slot.put(3) is True
    assert slot.take(timeout=0.1) == 3
    assert slot.take(timeout=0.01) is None


def test_latest_frame_wakes_a_waiting_worker_and_closes():
    slot = LatestFrame()
    got = []
    worker = threading.Thread(target=lambda: got.append(slot.take(timeout=5.0)))
    worker.start()
    slot.put("frame")
    worker.join(timeout=5.0)
    assert got == ["frame"]
    closer = threading.Thread(target=lambda: got.append(slot.take(timeout=30.0)))
    closer.start()
    slot.close()
    closer.join(timeout=5.0)
    assert not closer.is_alive() and got[-1] is None


def test_process_frame_builds_only_the_outputs_wanted(tmp_path):
    from lpcv_segmentation.core.classes import DETECTION_CLASS_IDS
    from lpcv_segmentation.node.pipeline import Wanted, process_frame
    from lpcv_segmentation.runtime.segmenter import Segmenter
    from ros_helpers import scene_rgb, write_palette_model
    segmenter = Segmenter(write_palette_model(tmp_path / "palette.onnx", 128),
                          backend="onnxruntime")
    rgb = scene_rgb(720, 1280)
    bare = process_frame(segmenter, rgb, 1, 2, "cam", DETECTION_CLASS_IDS, 64,
                         Wanted(color=False, overlay=False, detections=False))
    assert bare.labels.shape == (720, 1280)
    assert (bare.color, bare.overlay, bare.detections) == (None, None, None)
    assert set(bare.timings_ms) == {"preprocess", "inference", "postprocess", "outputs"}
    full = process_frame(segmenter, rgb, 1, 2, "cam", DETECTION_CLASS_IDS, 64, Wanted(),
                         visual_max_side=320)
    assert full.color.shape == full.overlay.shape == (180, 320, 3)
    assert full.detections["width"] == 1280 and len(full.detections["detections"]) == 5
    assert all(r["mean_confidence"] > 0.9 for r in full.detections["detections"])
