"""One row of bench/gpu_check.sh per call: runs one GPU path of the default model and appends
a JSON line {"row", "status" (ok | failed | skipped), "detail", "latency_ms", "agreement"} to
--out. Latency is the median of --iterations timed inferences after warm-up on a 1x3xSxS
input (the device synchronised: every back end returns host memory); agreement is the share
of pixels whose class matches ONNX Runtime fp32 on the CPU, over synthetic scenes.

    python bench/gpu_rows.py ROW --out rows.jsonl [--work DIR] [--iterations 50]

Rows: cpu-reference, ort-cuda, ort-tensorrt, tensorrt-build, tensorrt-backend, pytorch-fp32,
pytorch-fp16. A row whose GPU piece is missing is "skipped" with the reason; an exception is
"failed" with its one-line message. Never raises.
"""
import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from lpcv_segmentation.runtime.segmenter import RuntimeConfigError, Segmenter  # noqa: E402

ONNX = REPO / "models" / "default.onnx"
CHECKPOINT = REPO / "models" / "default.safetensors"
SCENES = 8  # synthetic scenes for the agreement figure
REFERENCE_FILE = "cpu_reference.npz"  # the CPU fp32 labels, written by cpu-reference


class Skip(Exception):
    """The row cannot run on this machine; the message says what is missing."""


def scenes(size: int) -> List[np.ndarray]:
    from training.export import check_scenes
    return check_scenes(SCENES, size)


def latency_ms(segmenter: Segmenter, iterations: int) -> float:
    x = np.zeros((1, 3, segmenter.input_size, segmenter.input_size), np.float32)
    segmenter.warmup(5)
    times = []
    for _ in range(iterations):
        t0 = time.perf_counter()
        segmenter.infer(x)
        times.append(1e3 * (time.perf_counter() - t0))
    return float(np.median(times))


def agreement(segmenter: Segmenter, work: Path) -> float:
    reference = np.load(work / REFERENCE_FILE)["labels"]
    labels = np.stack([segmenter.segment(rgb).labels for rgb in scenes(reference.shape[1])])
    return float((labels == reference).mean())


def measured(segmenter: Segmenter, args: argparse.Namespace, detail: str) -> Dict[str, Any]:
    where = "%s; %s, %s" % (detail, segmenter.device, segmenter.precision)
    return {"status": "ok", "detail": where,
            "latency_ms": latency_ms(segmenter, args.iterations),
            "agreement": agreement(segmenter, Path(args.work))}


def _ort_providers() -> List[str]:
    import onnxruntime
    return onnxruntime.get_available_providers()


def _need_provider(name: str) -> None:
    if name not in _ort_providers():
        raise Skip("onnxruntime has no %s (providers: %s); install onnxruntime-gpu"
                   % (name, ", ".join(_ort_providers())))


def _need_torch_cuda() -> None:
    try:
        import torch
    except ImportError as error:
        raise Skip("torch is not installed (%s)" % error)
    if not torch.cuda.is_available():
        raise Skip("torch %s sees no CUDA device" % torch.__version__)


def _need_tensorrt() -> None:
    from lpcv_segmentation.runtime.engine_cache import tensorrt_version
    if tensorrt_version() is None:
        raise Skip("the tensorrt Python package is not installed")


# -- rows ---------------------------------------------------------------------------------------
def cpu_reference(args: argparse.Namespace) -> Dict[str, Any]:
    segmenter = Segmenter(str(ONNX), device="cpu")
    labels = np.stack([segmenter.segment(rgb).labels for rgb in scenes(512)])
    np.savez_compressed(Path(args.work) / REFERENCE_FILE, labels=labels)
    return measured(segmenter, args, "ONNX Runtime CPU fp32, the reference")


def ort_cuda(args: argparse.Namespace) -> Dict[str, Any]:
    _need_provider("CUDAExecutionProvider")
    segmenter = Segmenter(str(ONNX), device="cuda",
                          providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    return measured(segmenter, args, "ONNX Runtime CUDA provider, fp32 file")


def ort_tensorrt(args: argparse.Namespace) -> Dict[str, Any]:
    """Builds the provider's fp16 engine into the cache, then starts again from the cache."""
    from lpcv_segmentation.runtime.engine_cache import engine_build_needed
    _need_provider("TensorrtExecutionProvider")
    cache = str(Path(args.work) / "engine_cache")
    providers = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    starts = []
    for _ in range(2):
        needed = engine_build_needed(str(ONNX), "onnxruntime", "cuda", "fp16", cache)
        t0 = time.perf_counter()
        segmenter = Segmenter(str(ONNX), device="cuda", precision="fp16", providers=providers,
                              engine_cache_dir=cache)
        segmenter.warmup(1)  # the provider builds its engine on the first run
        starts.append((needed, time.perf_counter() - t0))
    if not starts[0][0] or starts[1][0]:
        raise RuntimeError("engine_build_needed said %s then %s; expected True then False"
                           % (starts[0][0], starts[1][0]))
    return measured(segmenter, args, "ONNX Runtime TensorRT provider fp16: first start %.0f s "
                    "(engine build), second %.1f s (cache hit)" % (starts[0][1], starts[1][1]))


def tensorrt_build(args: argparse.Namespace) -> Dict[str, Any]:
    """The pre-flight command twice: a build, then a cache hit."""
    import subprocess
    _need_tensorrt()
    command = [sys.executable, "-m", "lpcv_segmentation.runtime.build_engine", "--model", str(ONNX),
               "--precision", "fp16", "--cache-dir", str(Path(args.work) / "engine_cache"),
               "--build-only"]
    lines = []
    for expected in ("built", "cache hit"):
        t0 = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True, cwd=str(REPO))
        if result.returncode != 0:
            lines = result.stderr.strip().splitlines() or ["exit %d" % result.returncode]
            raise RuntimeError(lines[-1])
        if not result.stdout.startswith(expected):
            raise RuntimeError("expected %r, got %r" % (expected, result.stdout.strip()))
        lines.append("%s in %.0f s" % (expected, time.perf_counter() - t0))
    return {"status": "ok", "detail": "python -m lpcv_segmentation.runtime.build_engine --build-only: "
            + ", then ".join(lines)}


def tensorrt_backend(args: argparse.Namespace) -> Dict[str, Any]:
    _need_tensorrt()
    segmenter = Segmenter(str(ONNX), backend="tensorrt", device="cuda", precision="fp16",
                          engine_cache_dir=str(Path(args.work) / "engine_cache"))
    built = getattr(segmenter.runner, "built_engine", None)
    return measured(segmenter, args, "TensorRT back end on the .onnx file (engine %s)"
                    % ("built now" if built else "from the cache"))


def pytorch(precision: str) -> Callable[[argparse.Namespace], Dict[str, Any]]:
    def row(args: argparse.Namespace) -> Dict[str, Any]:
        _need_torch_cuda()
        segmenter = Segmenter(str(CHECKPOINT), backend="pytorch", device="cuda",
                              precision=precision)
        return measured(segmenter, args, "PyTorch eager on the checkpoint")
    return row


ROWS: Dict[str, Callable[[argparse.Namespace], Dict[str, Any]]] = {
    "cpu-reference": cpu_reference,
    "ort-cuda": ort_cuda,
    "ort-tensorrt": ort_tensorrt,
    "tensorrt-build": tensorrt_build,
    "tensorrt-backend": tensorrt_backend,
    "pytorch-fp32": pytorch("fp32"),
    "pytorch-fp16": pytorch("fp16"),
}


def run_row(name: str, args: argparse.Namespace) -> Dict[str, Any]:
    row: Dict[str, Any] = {"row": name, "latency_ms": None, "agreement": None}
    try:
        row.update(ROWS[name](args))
    except Skip as reason:
        row.update(status="skipped", detail=str(reason))
    except (RuntimeConfigError, RuntimeError, OSError, ValueError, ImportError) as error:
        first = (str(error).strip().splitlines() or [""])[0]
        row.update(status="failed", detail="%s: %s" % (type(error).__name__, first))
    except Exception as error:  # noqa: BLE001  one broken row must not hide the others
        traceback.print_exc()
        row.update(status="failed", detail="%s: %s" % (type(error).__name__, error))
    return row


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("row", choices=list(ROWS))
    parser.add_argument("--out", required=True, help="JSON-lines file the row is appended to")
    parser.add_argument("--work", default=".", help="folder for the reference and the cache")
    parser.add_argument("--iterations", type=int, default=50, help="timed inferences")
    args = parser.parse_args(argv)
    os.makedirs(args.work, exist_ok=True)
    row = run_row(args.row, args)
    with open(args.out, "a") as out:
        out.write(json.dumps(row) + "\n")
    print("%s: %s (%s)" % (row["row"], row["status"], row["detail"]))
    return 0 if row["status"] != "failed" else 1


if __name__ == "__main__":
    sys.exit(main())
