"""Node overhead: the node's time per frame, conversion to publication, over the bare back end's.

The bare back end is the model's ``run(x)`` on the pre-processed test scene, timed in this
process. The node runs with config/drone.yaml in its own process and gets the same 512x512
scene from the test camera in bursts at a quarter of the rate the bare model sustains, so it
is idle between frames even at a few times the bare model's cost. Bare blocks and node bursts
alternate (drift on a shared machine touches both sides alike; the node sits idle while the
bare back end is timed). The node's time per frame
is the sum of its per-stage medians from /diagnostics (conversion, preprocess, inference,
postprocess including the outputs it builds, publish) over all frames. Measured with the
outputs of drone.yaml (mask, colour mask, overlay, detections) and with the mask and
detections only. Target: at most 1.10x.

    .venv/bin/python bench/node_overhead.py
    .venv/bin/python bench/node_overhead.py --model MODEL.onnx --frames 20
"""
import argparse
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Tuple

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))
from common import timed  # noqa: E402
from node_graph import NodeGraph, percentile  # noqa: E402
from report import Target, finish, fmt, markdown_table, ratio  # noqa: E402

DEFAULT_MODEL = BENCH.parent / "models" / "default.onnx"
STAGES = ("conversion", "preprocess", "inference", "postprocess", "publish")
TARGET = 1.10
OUTPUTS: Dict[str, Dict[str, object]] = {
    "drone.yaml outputs (mask, colour, overlay, detections)": {},
    "mask and detections only": {"publish_color": False, "publish_overlay": False},
}


class BareBackend:
    """The model's back end alone, on the pre-processed test scene, in this process."""

    def __init__(self, model: str, backend: str, size: int) -> None:
        from lpcv_segmentation.runtime import Segmenter
        from node_graph import scene_rgb
        self.segmenter = Segmenter(model, backend=backend)
        self.x = self.segmenter.preprocess(scene_rgb(size, size))
        timed(lambda: self.segmenter.runner.run(self.x), 1, warmup=2)  # lazy allocations

    def time_ms(self, repeats: int) -> float:
        """Median milliseconds of ``repeats`` runs."""
        return timed(lambda: self.segmenter.runner.run(self.x), repeats, warmup=0).median_ms


def measure_outputs(work: Path, model: str, backend: str, size: int, frames: int, rounds: int,
                    bare: BareBackend, repeats: int, outputs: Dict[str, object]
                    ) -> Dict[str, object]:
    """One node; ``rounds`` times: time the bare back end, then send the node a burst of
    frames at a quarter of the rate the bare back end sustains. Per-stage medians over all frames;
    the bare figure is the median of the blocks' medians."""
    params = dict(outputs, input_qos="reliable", stats_window_s=3600.0)
    bare_ms: List[float] = []
    with NodeGraph(work, model, backend, params=params) as graph:
        for index in range(rounds):
            bare_ms.append(bare.time_ms(repeats))
            rate = min(30.0, 250.0 / percentile(bare_ms, 50))
            graph.camera(max(1, frames // rounds), rate, width=size, height=size, qos="reliable",
                         frame_id="overhead%d" % index)
            counts = graph.settled_counts(timeout=60)
        bare_ms.append(bare.time_ms(repeats))
        values = graph.diagnostics() or {}
        masks = [e for e in graph.events("mask") if e.get("frame_id", "").startswith("overhead")]
    stages: Dict[str, Optional[float]] = {
        stage: _float(values.get("latency_%s_p50_ms" % stage)) for stage in STAGES}
    return {"stages": stages, "processed": counts["processed"], "dropped": counts["dropped"],
            "bare_p50_ms": percentile(bare_ms, 50), "bare_block_ms": bare_ms,
            "round_trip_p50_ms": percentile([1000.0 * (e["received"] - e["stamp"][0]
                                                      - e["stamp"][1] * 1e-9) for e in masks], 50)}


def _float(text: Optional[str]) -> Optional[float]:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def run(model: str, backend: str, size: int, frames: int, rounds: int, repeats: int, work: Path
        ) -> Dict[str, object]:
    bare = BareBackend(model, backend, size)
    runs = {}
    for index, (name, outputs) in enumerate(OUTPUTS.items()):
        runs[name] = measure_outputs(work / ("outputs%d" % index), model, backend, size, frames,
                                     rounds, bare, repeats, outputs)
    return {"model": model, "backend": backend, "size": size, "frames": frames,
            "rounds": rounds, "node": runs}


def section(result: Dict[str, object]) -> Tuple[str, List[Target]]:
    rows, targets = [], []
    for name, run in result["node"].items():
        stages, bare = run["stages"], run["bare_p50_ms"]
        parts = [stages[s] for s in STAGES]
        total = None if any(p is None for p in parts) else sum(parts)
        overhead = ratio(total, bare)
        rows.append([name] + [fmt(stages[s], "%.1f") for s in STAGES]
                    + [fmt(total, "%.1f"), fmt(bare, "%.1f"), "**%s**" % fmt(overhead, "%.2fx"),
                       fmt(ratio(total, stages["inference"]), "%.2fx"),
                       fmt(run["round_trip_p50_ms"], "%.1f"), run["processed"]])
        targets.append(Target("node overhead, %s" % name, "<= %.2fx" % TARGET,
                              "%s (%s ms / %s ms)" % (fmt(overhead, "%.2fx"), fmt(total, "%.1f"),
                                                      fmt(bare, "%.1f")),
                              None if overhead is None else overhead <= TARGET))
    body = "\n\n".join([
        "Model %s (%s back end), %dx%d rgb8 frames, reliable QoS, in %d bursts at a quarter "
        "of the rate the bare back end sustains, each burst after a block of bare back-end "
        "runs in "
        "the bench process. Node figures: per-stage medians (ms) from its /diagnostics over "
        "all frames; node total = their sum; bare = median of the blocks' `run(x)` medians; "
        "node / own inference = the same ratio against the node's inference stage, which was "
        "timed in the same moments." % (
            result["model"], result["backend"], result["size"], result["size"],
            result["rounds"]),
        markdown_table(["node outputs"] + list(STAGES)
                       + ["node total", "bare back end", "node / bare", "node / own inference",
                          "stamp to mask at a listener", "frames"], rows),
    ])
    return body, targets


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="model file")
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--size", type=int, default=512, help="camera frame width and height")
    parser.add_argument("--frames", type=int, default=40, help="frames sent to the node")
    parser.add_argument("--rounds", type=int, default=4,
                        help="bursts of frames, each after a block of bare back-end runs")
    parser.add_argument("--repeats", type=int, default=5,
                        help="timed bare back-end runs per block")
    parser.add_argument("--work", default=None, help="folder for logs (default: a temporary one)")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if not Path(args.model).is_file():
        print("not available: %s missing" % args.model)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench_overhead_") as tmp:
        result = run(args.model, args.backend, args.size, args.frames, args.rounds,
                     args.repeats, Path(args.work or tmp))
    body, targets = section(result)
    return finish("Node overhead", body, targets, args.json, {"result": result})


if __name__ == "__main__":
    sys.exit(main())
