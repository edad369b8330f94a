"""Short runs of the load and malformed-input benches (bench/load.py, bench/malformed.py).

They guard behaviour, never speed: the node stays up, every frame that reaches it ends
processed, dropped or rejected, every malformed frame is rejected and every good frame gets a
mask of its size. Real processes throughout: each bench runs as the command a user runs (its
JSON record is what is checked), with the node, the test camera and listener, and the
malformed-frame driver, each graph in a ROS domain of its own. About 40 s on 2 cores.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"

pytestmark = [pytest.mark.ros, pytest.mark.slow]


def run_bench(script, tmp_path, *args):
    """The bench's JSON record (bench/report.py's convention)."""
    record = tmp_path / "record.json"
    result = subprocess.run([sys.executable, str(BENCH / script)] + [str(a) for a in args]
                            + ["--work", str(tmp_path / "work"), "--json", str(record)],
                            capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return json.loads(record.read_text())


def balanced(counts):
    """Every frame that reached the node ended processed, dropped or rejected."""
    return counts["received"] == counts["processed"] + counts["dropped"] + counts["rejected"]


def test_a_camera_faster_than_the_model_is_absorbed_with_every_frame_accounted(
        tiny_onnx, tmp_path):
    # 256x256 frames at 100 Hz for 3 s: more than the node can take on a shared 2-core machine
    # while it publishes mask, colour and overlay; what it cannot take it must count as dropped.
    record = run_bench("load.py", tmp_path, "--model", tiny_onnx, "--size", 256, "--rate", 100,
                       "--duration", 3, "--window", 1, "--no-profile-duration", 0)
    [result] = record["results"]
    counts = result["counters"]
    assert result["node_alive_after"] and result["node_exit_code"] == 0
    assert counts is not None and result["balanced"] and balanced(counts), counts
    assert 0 < counts["received"] <= result["sent"]
    assert counts["rejected"] == 0
    assert counts["processed"] > 0
    assert 0 < result["masks_received"] <= counts["processed"]
    assert result["rss_first_mb"] is not None and result["peak_rss_mb"] > 0


def test_malformed_frames_are_rejected_and_good_frames_masked(tiny_onnx, tmp_path):
    record = run_bench("malformed.py", tmp_path, "--model", tiny_onnx, "--backend",
                       "onnxruntime", "--bad", 40, "--good", 8, "--seed", 3)
    assert set(record["results"]) == {"raw", "compressed"}
    for input_type, result in record["results"].items():
        # Every kind of malformation was sent, and each was refused by the input checks with a
        # reason, not by the catch-all for exceptions while processing a frame.
        assert set(result["sent_by_kind"]) == set(record["kinds"][input_type]) | {"good"}
        assert "processing_error" not in result["rejected_by_reason"], result
        assert sum(result["rejected_by_reason"].values()) == result["bad_sent"]
        verdicts = dict(record["verdicts"][input_type])
        # Six verdicts, "clean exit on SIGINT afterwards" among them.
        assert verdicts["clean exit on SIGINT afterwards"], (input_type, result)
        assert len(verdicts) == 6 and all(verdicts.values()), (input_type, verdicts, result)
        assert result["counters"]["dropped"] == 0  # one frame at a time: nothing replaced
