"""The LPCV 2023 2nd-place network (TopFormer-tiny, 288 px) beside ours in every latency table.

The file is not part of the package (``../shared/peers/README.md``: its licence and contract:
1x3x288x288 float32 RGB normalised with mmsegmentation's mean/std on 0-255 pixels, 1x14x36x36
logits at stride 8). A latency bench takes it with ``--peer FILE`` (``add_argument``), finds it
by default in ``shared/peers/`` beside the repository (or above it), and runs without it,
saying so. The peer is timed like our models: its forward pass on a pre-processed input, in
an ONNX Runtime session set up as ``runtime.OnnxRuntimeBackend`` sets up ours, interleaved with
them in the same rounds.
"""
import argparse
import os
from pathlib import Path
from typing import Any, Callable, List, NamedTuple, Optional

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
PEER_FILE = "lpcv2023_2nd_topformer_tiny_288.onnx"
LABEL = "peer: LPCV 2023 2nd (TopFormer-tiny)"
NONE = "none"  # --peer none: do not time the peer


class Peer(NamedTuple):
    path: Optional[str]  # None: not timed
    note: str  # where it came from, or why it is not timed

    def line(self) -> str:
        return "Peer: %s." % self.note


def default_path() -> Optional[Path]:
    """``shared/peers/PEER_FILE`` in the repository's parent folder or one above it
    (``../shared/peers/...`` from a checkout beside ``shared/``, or from a worktree below it)."""
    for folder in list(ROOT.parents)[:2]:
        candidate = folder / "shared" / "peers" / PEER_FILE
        if candidate.is_file():
            return candidate
    return None


def add_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--peer", metavar="FILE",
                        help="the LPCV 2023 2nd-place ONNX file to time beside our models "
                             "(default: ../shared/peers/%s when it exists; 'none' to skip)"
                             % PEER_FILE)


def resolve(parser: argparse.ArgumentParser, given: Optional[str]) -> Peer:
    """The peer to time: a missing file given by name is an error naming it; a missing
    default is a note in the report."""
    if given == NONE:
        return Peer(None, "not timed (--peer none)")
    if given:
        if not Path(given).is_file():
            parser.error("--peer: %s does not exist" % given)
        return Peer(given, "`%s`" % given)
    found = default_path()
    if found is None:
        return Peer(None, "not timed: ../shared/peers/%s not found (give it with --peer FILE)"
                    % PEER_FILE)
    return Peer(str(found), "`%s`" % _shown(found))


def _shown(path: Path) -> str:
    return os.path.relpath(str(path), str(ROOT))


def runner(path: str, threads: int) -> Callable[[], Any]:
    """The peer's forward pass on a pre-processed input of its own shape, ``threads`` intra-op
    threads, every graph optimisation on (the options ``runtime.OnnxRuntimeBackend`` uses)."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    inputs = session.get_inputs()
    shape: List[int] = [d if isinstance(d, int) else 1 for d in inputs[0].shape]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    name = inputs[0].name
    return lambda: session.run(None, {name: x})


def labelled_runner(path: str, threads: int, out_size: int) -> Callable[[], Any]:
    """``runner`` followed by the runtime's post-processing of the peer's stride-8 logits
    (argmax, nearest resize to an ``out_size`` square label map): what a frame costs it."""
    from lpcv_segmentation.runtime.segmenter import postprocess
    forward = runner(path, threads)
    return lambda: postprocess(forward()[0], (out_size, out_size))


def input_size(path: str) -> int:
    """S of the peer's 1x3xSxS input."""
    import onnxruntime as ort
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return int(session.get_inputs()[0].shape[-1])
