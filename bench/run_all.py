"""Run every bench in one go and rewrite docs/reports/benchmarks.md with what they measured.

    make bench                                    # = .venv/bin/python bench/run_all.py
    .venv/bin/python bench/run_all.py --quick     # short durations: checks the chain (~5 min)
    .venv/bin/python bench/run_all.py --only load malformed --out /tmp/partial.md

Each bench runs as its own process, one after the other (they would skew each other's
timings if run together), with the command printed beside its figures in the document.
Latencies are reported as ratios where they matter: the machines are shared and noisy. A
bench whose model file is missing reports "not available: <path> missing" instead of a
figure; a bench that fails is reported as failed, with the end of its error output; every
target is listed at the top, met or MISSED, with the measured figure.
"""
import argparse
import collections
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))
from lpcv_segmentation.core.fileio import file_sha256, write_text_atomic  # noqa: E402
from report import markdown_table  # noqa: E402

DOC = ROOT / "docs" / "reports" / "benchmarks.md"
DEFAULT_ONNX = "models/default.onnx"
DEFAULT_CHECKPOINT = "models/default.safetensors"
UNPRUNED = "runs/default_model/student/best.safetensors"
UNDISTILLED = "runs/ablation_cpu/student/best.safetensors"
BUDGET_S = 15 * 60
# The method and the measurements behind it (kept here, not in the timer's comments).
TIMING_METHOD = (
    "Every latency here, in the sweep and in the ablation comes from one timer, "
    "`lpcv_segmentation.core.timing.interleaved`: after warm-up, each round runs every model in "
    "turn for one untimed call and a block of timed calls, and a latency is the median of "
    "all its timed calls. Interleaving makes drift in the machine's load touch every model "
    "alike, so ratios measured in one run compare. Blocks, not single calls: timing single "
    "calls in turn made a 2-thread ONNX Runtime session of the unpruned student 6x slower "
    "than the same session in a loop on this shared machine (its worker threads asleep at "
    "every call), which made the ratios meaningless; the untimed call absorbs the previous "
    "runner's threads winding down. PyTorch's OpenMP threads sleep when idle "
    "(OMP_WAIT_POLICY=PASSIVE): spinning ones made eager inference on 2 threads 3x to 50x "
    "slower whenever another process used the CPU, which measured the contention, not the "
    "model. On a machine busier than its cores, multi-threaded wall times suffer unevenly "
    "(a thread pool waits at every barrier for a descheduled thread), while the CPU time of "
    "a single-threaded run stays close to the work done; benches that report CPU time do so "
    "for that reason.")


class Step(NamedTuple):
    key: str
    heading: str  # section heading in the document
    script: str  # under bench/
    full: List[str]  # arguments of the full run
    quick: List[str]  # arguments of --quick
    writes_json: bool  # takes --json PATH (bench/report.py convention)
    timeout_s: int


def steps(args: argparse.Namespace) -> List[Step]:
    """The benches in the order they run, with their arguments for this invocation."""
    node_model = ["--model", args.model]
    load_model = ["--checkpoint", args.checkpoint, "--input-size", str(args.load_input_size)]
    backends = ["--model", "default=%s" % args.checkpoint, "--model", "unpruned=%s" % args.unpruned,
                "--model", "undistilled=%s" % args.undistilled]
    peer = ["--peer", args.peer] if args.peer else []  # else each bench finds the default
    backends += peer
    pruning = list(peer)
    if Path(args.unpruned).is_file() or (ROOT / args.unpruned).is_file():
        pruning += ["--checkpoint", args.unpruned]
        if Path(args.checkpoint).is_file() or (ROOT / args.checkpoint).is_file():
            pruning += ["--pruned", args.checkpoint]
    return [
        Step("backends", "1. Back ends: PyTorch eager vs ONNX Runtime fp32 and int8",
             "backends_default.py", backends + ["--rounds", "6"], backends + ["--rounds", "2"],
             True, 480),
        Step("pruning", "2. Pruning: pruned vs unpruned students",
             "pruning.py", pruning + ["--rounds", "3"], pruning + ["--rounds", "2",
                                                                   "--sizes", "288"],
             True, 900),
        Step("overhead", "3. Node overhead: the node vs the bare back end", "node_overhead.py",
             node_model + ["--frames", "32", "--rounds", "4"],
             node_model + ["--frames", "8", "--rounds", "2", "--repeats", "3",
                           "--sizes", "640x480", "1920x1080"], True, 900),
        Step("cold_start", "3b. Cold start: launch to first mask (ONNX Runtime)",
             "cold_start.py", node_model + ["--launches", "3"],
             node_model + ["--launches", "1"], True, 300),
        Step("memory", "4. Memory: the node's peak resident memory per back end", "memory.py",
             ["--onnx", args.model, "--checkpoint", args.checkpoint, "--frames", "30"],
             ["--onnx", args.model, "--checkpoint", args.checkpoint, "--frames", "10"],
             True, 360),
        # The default model at 512 px input, as the camera sends: slower than 30 Hz here.
        Step("load", "5. Load: a 30 Hz camera into a slower model", "load.py",
             load_model + ["--duration", "60", "--no-profile-duration", "20"],
             load_model + ["--duration", "10", "--no-profile-duration", "5", "--window", "3"],
             True, 420),
        Step("malformed", "6. Malformed input mixed with good frames",
             "malformed.py", node_model + ["--bad", "1000", "--good", "100"],
             node_model + ["--bad", "100", "--good", "10"], True, 300),
        Step("dds", "Frame delivery with and without the Fast DDS profile (no node)",
             "dds_delivery.py", ["--frames", "150"], ["--frames", "60"], False, 180),
        Step("score", "Scoring speed", "score_speed.py", [], ["--images", "100"], False, 180),
    ]


# -- facts about the run ---------------------------------------------------------------------------
def _git(*args: str) -> str:
    try:
        return subprocess.run(["git"] + list(args), cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine() -> Dict[str, str]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    memory = ""
    try:
        with open("/proc/meminfo") as f:
            kb = int(next(line for line in f if line.startswith("MemTotal")).split()[1])
        memory = "%.0f GB" % (kb * 1024 / 1e9)
    except (OSError, StopIteration, ValueError):
        pass
    dirty = len([line for line in _git("status", "--porcelain").splitlines() if line.strip()])
    return {"cpu": cpu, "cores": str(os.cpu_count()), "memory": memory,
            "python": platform.python_version(), "commit": _git("rev-parse", "--short", "HEAD"),
            "uncommitted": str(dirty)}


MODEL_ROLES = (("node, memory (ONNX Runtime)", "model"),
               ("default student, memory (PyTorch)", "checkpoint"),
               ("unpruned student", "unpruned"),
               ("undistilled student", "undistilled"))


def model_facts(args: argparse.Namespace) -> Dict[str, Optional[Dict[str, str]]]:
    """{role: facts from the file itself (size, sha256, metadata), or None when missing}."""
    facts: Dict[str, Optional[Dict[str, str]]] = {}
    for role, option in MODEL_ROLES:
        given = getattr(args, option)
        path = Path(given) if Path(given).is_absolute() else ROOT / given
        if not path.is_file():
            facts[role] = None
            continue
        meta = _metadata(path)
        facts[role] = {"file": given, "size_mb": "%.1f" % (path.stat().st_size / 1e6),
                       "sha256": file_sha256(path)[:12], "arch": str(meta.get("arch", "?")),
                       "input": str(meta.get("input_size", "?")),
                       "params": "%.2fM" % (meta["params"] / 1e6) if meta.get("params")
                       else "?", "precision": str(meta.get("precision", "fp32"))}
    return facts


def model_rows(args: argparse.Namespace, before: Dict[str, Optional[Dict[str, str]]],
               after: Dict[str, Optional[Dict[str, str]]]) -> List[List[str]]:
    """The models as they were when the run started; a file that changed while the benches
    ran is flagged (benches that ran before and after the change measured different files)."""
    rows = []
    for role, option in MODEL_ROLES:
        facts = before[role]
        if facts is None:
            rows.append([role, "`%s`" % getattr(args, option),
                         "**not available: missing**", "-", "-", "-", "-"])
            continue
        note = "%s MB, sha256 %s" % (facts["size_mb"], facts["sha256"])
        if after.get(role) != facts:
            now = after.get(role)
            note += " (**changed during the run**: now %s)" % (
                "missing" if now is None else "sha256 %s" % now["sha256"])
        rows.append([role, "`%s`" % facts["file"], note, facts["arch"], facts["input"],
                     facts["params"], facts["precision"]])
    return rows


def _metadata(path: Path) -> Dict[str, object]:
    try:
        if path.suffix == ".onnx":
            from lpcv_segmentation.runtime.segmenter import Segmenter
            return dict(Segmenter(str(path), backend="onnxruntime").metadata)
        from lpcv_segmentation.model.checkpoint import read_metadata
        return dict(read_metadata(str(path)))
    except Exception as error:  # noqa: BLE001  a broken file is reported, not fatal here
        return {"arch": "unreadable (%s)" % type(error).__name__}


# -- running one bench ---------------------------------------------------------------------------
class Outcome(NamedTuple):
    step: Step
    command: str
    code: Optional[int]  # None: timed out
    seconds: float
    stdout: str
    stderr_tail: List[str]
    record: Optional[Dict[str, object]]


def bench_env() -> Dict[str, str]:
    """The benches' environment: OpenMP threads (PyTorch's) sleep when idle instead of spinning.
    On a shared machine spinning threads made PyTorch eager 3x to 50x slower, and slowed
    whatever ran beside them, so timings measured the contention rather than the model."""
    return dict(os.environ, OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))


def run_step(step: Step, arguments: List[str], work: Path) -> Outcome:
    """Run one bench; its stdout is its section, its stderr goes to the terminal as it comes."""
    json_path = work / (step.key + ".json")
    argv = [sys.executable, str(BENCH / step.script)] + arguments
    if step.writes_json:
        argv += ["--json", str(json_path)]
    shown = " ".join([".venv/bin/python", "bench/" + step.script]
                     + [shlex.quote(a) for a in arguments])
    print("\n=== %s\n    %s" % (step.heading, shown), file=sys.stderr, flush=True)
    tail: collections.deque = collections.deque(maxlen=30)
    start = time.monotonic()
    process = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, errors="replace", env=bench_env())

    def forward() -> None:
        for line in process.stderr:
            tail.append(line.rstrip("\n"))
            sys.stderr.write(line)
    forwarder = threading.Thread(target=forward, daemon=True)
    forwarder.start()
    try:
        stdout, _ = process.communicate(timeout=step.timeout_s)
        code: Optional[int] = process.returncode
    except subprocess.TimeoutExpired:
        process.terminate()  # its own children are stopped by its try/finally blocks
        try:
            stdout, _ = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            stdout, _ = process.communicate()
        code = None
    forwarder.join(timeout=5)
    seconds = time.monotonic() - start
    record = None
    if json_path.is_file():
        record = json.loads(json_path.read_text())
    return Outcome(step, shown, code, seconds, stdout, list(tail), record)


# -- the document ----------------------------------------------------------------------------------
def _demote(markdown: str) -> str:
    """A bench's own headings go one level below its section's."""
    return "\n".join("#" + line if line.startswith("## ") else line
                     for line in markdown.splitlines())


def section(outcome: Outcome) -> str:
    step = outcome.step
    lines = ["## %s" % step.heading, "",
             "`%s` (%.0f s)" % (outcome.command, outcome.seconds), ""]
    body = outcome.stdout.strip()
    if outcome.code is None:
        lines += ["**Timed out** after %d s; the end of its output:" % step.timeout_s]
    elif outcome.code == 2 and body.startswith("not available:"):
        return "\n".join(lines + ["**%s**" % body, ""])
    elif outcome.code != 0:
        lines += ["**Failed** (exit code %d); the end of its error output:" % outcome.code]
    if outcome.code != 0:
        tail = "\n".join(outcome.stderr_tail[-20:]) or "(nothing)"
        return "\n".join(lines + ["", "```", tail, "```", "", _demote(body), ""])
    return "\n".join(lines + [_demote(body), ""])


def target_rows(outcomes: Sequence[Outcome]) -> List[List[str]]:
    rows = []
    for outcome in outcomes:
        if outcome.record is None:
            continue
        for target in outcome.record.get("targets", []):
            verdict = {True: "met", False: "**MISSED**", None: "not measured"}[target["met"]]
            rows.append([outcome.step.heading.split(":")[0], target["item"], target["goal"],
                         target["measured"], verdict])
    return rows


def document(outcomes: Sequence[Outcome], args: argparse.Namespace, facts: Dict[str, str],
             started: datetime.datetime, wall_s: float, loads: Sequence[Sequence[float]],
             models_before: Dict[str, Optional[Dict[str, str]]],
             models_after: Dict[str, Optional[Dict[str, str]]]) -> str:
    mode = " --quick" if args.quick else ""
    targets = target_rows(outcomes)
    missed = [row for row in targets if "MISSED" in row[4]]
    problems = [o for o in outcomes if o.code != 0]
    lines = [
        "# Benchmarks",
        "",
        "Generated by `make bench` (`.venv/bin/python bench/run_all.py%s`) on %s in %.1f min%s. "
        "Each section names the command that produced its figures; run it alone to reproduce "
        "them. Times come from a shared machine, so the comparisons are ratios measured side "
        "by side in one run; absolute milliseconds move with the load." % (
            mode, started.strftime("%Y-%m-%d %H:%M UTC"), wall_s / 60.0,
            "" if wall_s <= BUDGET_S else " (**over the 15 min budget**)"),
        "",
        "Machine: %s, %s cores, %s RAM, Python %s; commit %s%s. Load average (1 min) %.1f "
        "at the start, %.1f at the end." % (
            facts["cpu"], facts["cores"], facts["memory"], facts["python"], facts["commit"],
            "" if facts["uncommitted"] == "0" else " plus %s uncommitted files"
            % facts["uncommitted"], loads[0][0], loads[-1][0]),
        "",
        "Rerun everything with `make bench` (about 15 min), check the chain in a few minutes "
        "with `.venv/bin/python bench/run_all.py --quick`, or run some benches with "
        "`--only backends pruning overhead cold_start memory load malformed dds score`; `--model`, "
        "`--checkpoint`, `--unpruned` and `--undistilled` point the benches at other model "
        "files. The node benches start the real node, camera and listener processes, each "
        "run in a ROS domain of its own. Every bench runs with OMP_WAIT_POLICY=%s."
        % bench_env()["OMP_WAIT_POLICY"],
        "",
        "## How the benches time",
        "",
        TIMING_METHOD,
        "",
        "## Models measured",
        "",
        markdown_table(["role", "file", "file facts", "arch", "input", "params", "precision"],
                       model_rows(args, models_before, models_after)),
        "",
        "## Targets",
        "",
    ]
    if targets:
        lines += [markdown_table(["item", "what", "target", "measured", "verdict"], targets), ""]
    lines.append("Missed: %s." % ("; ".join("%s (%s, target %s)" % (r[1], r[3], r[2])
                                            for r in missed) if missed else "none"))
    if problems:
        lines.append("Not measured (see their sections): %s." % ", ".join(
            o.step.heading.split(":")[0] for o in problems))
    lines.append("")
    for outcome in outcomes:
        lines.append(section(outcome))
    return "\n".join(lines).rstrip() + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="short durations and fewer frames (checks the chain, not figures)")
    parser.add_argument("--only", nargs="+", metavar="BENCH",
                        help="run only these (backends pruning overhead cold_start memory load malformed "
                             "dds score)")
    parser.add_argument("--model", default=DEFAULT_ONNX, help="ONNX model of the node benches")
    parser.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT,
                        help="the default student's checkpoint (PyTorch back end, back ends)")
    parser.add_argument("--unpruned", default=UNPRUNED, help="the student before pruning")
    parser.add_argument("--undistilled", default=UNDISTILLED,
                        help="the student trained without the teacher (written there by "
                             "python -m training ablation --config "
                             "training/configs/ablation_cpu.yaml --out runs/ablation_cpu)")
    parser.add_argument("--load-input-size", type=int, default=512,
                        help="input size the load bench runs --checkpoint at (exported)")
    parser.add_argument("--out", default=str(DOC), help="the document to (re)write")
    parser.add_argument("--peer", metavar="FILE",
                        help="the LPCV 2023 2nd-place ONNX file the latency benches time beside "
                             "our models (default: theirs, ../shared/peers/... when it exists; "
                             "'none' to skip)")
    args = parser.parse_args(argv)
    plan = steps(args)
    if args.only:
        unknown = sorted(set(args.only) - {s.key for s in plan})
        if unknown:
            parser.error("unknown bench(es) %s; choose from %s"
                         % (", ".join(unknown), ", ".join(s.key for s in plan)))
        plan = [s for s in plan if s.key in args.only]

    started = datetime.datetime.now(datetime.timezone.utc)
    loads = [os.getloadavg()]
    facts = machine()
    models_before = model_facts(args)
    begin = time.monotonic()
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="bench_run_all_") as work:
        for step in plan:
            outcomes.append(run_step(step, step.quick if args.quick else step.full, Path(work)))
    wall_s = time.monotonic() - begin
    loads.append(os.getloadavg())
    text = document(outcomes, args, facts, started, wall_s, loads, models_before,
                    model_facts(args))
    out = Path(args.out)
    write_text_atomic(out, text)
    print("\nwrote %s (%.1f min); targets missed: %d; benches not completed: %d"
          % (out, wall_s / 60.0, sum("MISSED" in r[4] for r in target_rows(outcomes)),
             sum(o.code != 0 for o in outcomes)), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
