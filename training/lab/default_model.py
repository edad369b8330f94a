"""Build the shipped default model end to end, with the repository's own commands.

    python -m training default-model [--out models/] [--work runs/default_model] [--quick]

Stages (settings: training/configs/default_model.yaml), each one of the repository's
commands with the arguments a user would type (training stages in their own process, the
short export and evaluation stages in this one):
  data      python -m training synth      synthetic disaster scenes (train + val)
  teacher   python -m training train      UPerNet-Swin-v2-T teacher
  student   python -m training train      the MobileViT student, distilled from the teacher
  prune     python -m training prune      structured pruning (all), distilled fine-tune
  export    python -m training export     ONNX fp32 and fp16 (each checked against PyTorch)
  evaluate  python -m training evaluate   every stage's model on the val split, latency here
  card      OUT/README.md (the model card) and OUT/default_model.json from those results

OUT receives default.onnx, default_fp16.onnx, default.safetensors (the pruned checkpoint, for
the PyTorch back end and further fine-tuning), default_model.json and README.md. WORK keeps
every run folder and log; --resume reuses the stages WORK already finished. --quick runs the
same chain at tiny sizes in about a minute (the test of the chain; not a usable model).
"""
import argparse
import copy
import json
import os
import platform
import subprocess
import sys
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any, Dict, List, Optional


from lpcv_segmentation.core.fileio import copy_file_atomic, write_json_atomic, write_text_atomic
from lpcv_segmentation.core.formatting import fmt
from training.config import load_yaml_mapping
from training.lab.stages import StageRunner

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = ROOT / "training" / "configs" / "default_model.yaml"
DEFAULT_OUT = ROOT / "models"
DEFAULT_WORK = ROOT / "runs" / "default_model"
REPORT_NAME = "default_model.json"
CARD_NAME = "README.md"
BEST = "best.safetensors"
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


class DefaultModelError(RuntimeError):
    """A stage failed or the settings are unusable; the message names the stage and its log."""


# --------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------
def _merge(base: Dict[str, Any], extra: Dict[str, Any]) -> Dict[str, Any]:
    """``extra`` over ``base``, recursing into mappings."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_settings(path: Path, quick: bool = False) -> Dict[str, Any]:
    """The YAML settings, with its ``quick`` section merged on top when asked."""
    settings = load_yaml_mapping(os.fspath(path), DefaultModelError, "settings")
    quick_settings = settings.pop("quick", {}) or {}
    if quick:
        settings = _merge(settings, quick_settings)
    for section in ("data", "teacher", "student", "prune", "export"):
        if not isinstance(settings.get(section), dict):
            raise DefaultModelError("%s: section %r missing" % (path, section))
    return settings


def _overrides(section: Dict[str, Any]) -> List[str]:
    """``{key: value}`` -> ``["key=value", ...]`` as the train/prune commands take them."""
    return ["%s=%s" % (key, json.dumps(value) if isinstance(value, (list, dict, bool))
                       or value is None else value)
            for key, value in (section.get("overrides") or {}).items()]


# --------------------------------------------------------------------------------------------
# Running one stage
# --------------------------------------------------------------------------------------------
class Chain:
    """Runs the stages' commands, logs each to WORK/logs/<stage>.log and records timings."""

    def __init__(self, work: Path, resume: bool, echo: bool = True,
                 threads: Optional[int] = None) -> None:
        self.work = work
        self.resume = resume
        self.echo = echo
        self.env = dict(os.environ)
        if threads:
            for name in THREAD_VARIABLES:
                self.env[name] = str(threads)
            import torch
            torch.set_num_threads(int(threads))  # the stages run in this process
        self.logs = work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.runner = StageRunner(resume, error=DefaultModelError, say=self._say)

    @property
    def stages(self) -> List[Dict[str, Any]]:
        """{"stage", "command", "log", "seconds" or "reused"} of every stage so far."""
        return self.runner.records

    def run(self, stage: str, args: List[str], done: Path, in_process: bool = False) -> None:
        """Run ``python -m training ARGS`` unless --resume and ``done`` already exists.

        Training stages get their own process (their memory is returned when they end); the
        short export and evaluation stages run ``training.__main__.main(ARGS)`` here, which
        saves a start of Python and torch for each.
        """
        command = [sys.executable, "-m", "training"] + [str(a) for a in args]
        log = self.logs / ("%s.log" % stage)

        def work() -> None:
            start = time.time()
            code = (self._run_here if in_process else self._run_process)(command, log)
            if code != 0:
                tail = "".join(log.read_text(errors="replace").splitlines(True)[-15:])
                raise DefaultModelError("stage %s failed (exit %s) after %.0f s: %s\nlog %s "
                                        "ends with:\n%s" % (stage, code, time.time() - start,
                                                            " ".join(command[1:]), log, tail))
        self.runner.run(stage, done, work, " ".join(_shell_word(c) for c in command[1:]),
                        command=command, log=str(log))

    def _run_process(self, command: List[str], log: Path) -> int:
        with open(log, "wb") as handle:
            process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, env=self.env)
            # Raw chunks, not lines: progress bars redraw with carriage returns.
            for chunk in iter(lambda: os.read(process.stdout.fileno(), 65536), b""):
                handle.write(chunk)
                handle.flush()
                if self.echo:
                    _echo(chunk)
            process.stdout.close()
            return process.wait()

    def _run_here(self, command: List[str], log: Path) -> int:
        from training.__main__ import main as training_main
        with open(log, "w") as handle:
            tee = _Tee(handle, sys.stdout if self.echo else None)
            with redirect_stdout(tee), redirect_stderr(tee):
                try:
                    return int(training_main(command[3:]) or 0)
                except SystemExit as exit_:  # argparse refusing the arguments
                    return exit_.code if isinstance(exit_.code, int) else 1

    def _say(self, text: str) -> None:
        if self.echo:
            print(text, flush=True)


class _Tee:
    """A text stream writing to a log file and, optionally, to the terminal."""

    def __init__(self, log, screen) -> None:
        self.log, self.screen = log, screen

    def write(self, text: str) -> int:
        self.log.write(text)
        if self.screen is not None:
            self.screen.write(text)
        return len(text)

    def flush(self) -> None:
        self.log.flush()
        if self.screen is not None:
            self.screen.flush()

    def isatty(self) -> bool:
        return False


def _echo(chunk: bytes) -> None:
    buffer = getattr(sys.stdout, "buffer", None)
    if buffer is not None:
        buffer.write(chunk)
    else:  # a replaced sys.stdout (e.g. captured) takes text
        sys.stdout.write(chunk.decode("utf-8", "replace"))
    sys.stdout.flush()


def _shell_word(word: str) -> str:
    return word if word and all(c.isalnum() or c in "-_./=:,+" for c in word) else repr(word)


# --------------------------------------------------------------------------------------------
# The chain
# --------------------------------------------------------------------------------------------
def build(settings: Dict[str, Any], out: Path, work: Path, resume: bool = False,
          quick: bool = False, echo: bool = True) -> Dict[str, Any]:
    """Run every stage; returns the report written to OUT/default_model.json."""
    if work.exists() and any(work.iterdir()) and not resume:
        raise DefaultModelError("%s already holds a build; pass --resume to reuse its finished "
                                "stages, or choose another --work" % work)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    chain = Chain(work, resume, echo, settings.get("threads"))
    started = time.time()
    data = work / "data"
    teacher, student, pruned = work / "teacher", work / "student", work / "pruned"
    d, p, e = settings["data"], settings["prune"], settings["export"]

    chain.run("data", ["synth", "--out", data, "--count", d["count"], "--size", d["size"],
                       "--seed", d["seed"], "--val-fraction", d["val_fraction"]],
              data / "synthetic.json")
    chain.run("teacher", ["train", "--config", ROOT / settings["teacher"]["config"],
                          "--data", data, "--out", teacher] + _overrides(settings["teacher"]),
              teacher / BEST)
    chain.run("student", ["train", "--config", ROOT / settings["student"]["config"],
                          "--data", data, "--out", student, "--teacher", teacher / BEST]
              + _overrides(settings["student"]), student / BEST)
    chain.run("prune", ["prune", "--checkpoint", student / BEST, "--data", data, "--out", pruned,
                        "--method", p["method"], "--target", p["target"], "--amount", p["amount"],
                        "--finetune-iters", p["finetune_iters"], "--teacher", teacher / BEST]
              + _overrides(p), pruned / "prune.json")

    models = {"fp32": work / "default.onnx"}
    chain.run("export_fp32", ["export", "--checkpoint", pruned / BEST, "--format", "onnx",
                              "--out", models["fp32"], "--verify-images", e["verify_images"],
                              "--json", work / "export_fp32.json"], models["fp32"],
              in_process=True)
    if e.get("fp16", True):
        models["fp16"] = work / "default_fp16.onnx"
        chain.run("export_fp16", ["export", "--checkpoint", pruned / BEST, "--format", "onnx",
                                  "--fp16", "--out", models["fp16"], "--verify-images",
                                  e["verify_images"], "--json", work / "export_fp16.json"],
                  models["fp16"], in_process=True)

    # Every stage's model on the same val images; latency of the ONNX files on this CPU.
    latency = settings.get("latency") or {}
    evaluated = {"teacher": teacher / BEST, "student": student / BEST, "pruned": pruned / BEST,
                 "onnx_fp32": models["fp32"]}
    if "fp16" in models:
        evaluated["onnx_fp16"] = models["fp16"]
    evaluations: Dict[str, Dict[str, Any]] = {}
    for name, model in evaluated.items():
        result = work / ("eval_%s.json" % name)
        args = ["evaluate", "--checkpoint", model, "--data", data, "--split", "val",
                "--json", result, "--warmup", latency.get("warmup", 3)]
        if latency.get("threads"):
            args += ["--threads", latency["threads"]]
        chain.run("evaluate_%s" % name, args, result, in_process=True)
        evaluations[name] = json.loads(result.read_text())

    # Publish: copy the files into OUT, then the report and the card.
    shipped = {"default.onnx": models["fp32"], "default.safetensors": pruned / BEST}
    if "fp16" in models:
        shipped["default_fp16.onnx"] = models["fp16"]
    for name, source in shipped.items():
        copy_file_atomic(source, out / name)
    report = {
        "command": "python -m training default-model" + (" --quick" if quick else ""),
        "quick": quick,
        "work": _relative(work),
        "settings": settings,
        "files": {name: {"bytes": (out / name).stat().st_size} for name in sorted(shipped)},
        "prune": json.loads((pruned / "prune.json").read_text()),
        "export": {"fp32": json.loads((work / "export_fp32.json").read_text())},
        "evaluations": evaluations,
        "stages": chain.stages,
        "machine": machine_description(),
        "seconds": round(time.time() - started, 1),
        "built": time.strftime("%Y-%m-%d"),
    }
    if "fp16" in models:
        report["export"]["fp16"] = json.loads((work / "export_fp16.json").read_text())
    write_json_atomic(out / REPORT_NAME, report)
    write_text_atomic(out / CARD_NAME, model_card(report))
    return report


def _relative(path: Path) -> str:
    """``path`` relative to the repository when inside it (cards are committed)."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def machine_description() -> Dict[str, Any]:
    import onnxruntime
    import torch
    return {"cpu": _cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "onnxruntime": onnxruntime.__version__}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# --------------------------------------------------------------------------------------------
# The model card
# --------------------------------------------------------------------------------------------
def _student_title(overrides: Dict[str, Any]) -> str:
    """The student's encoder and decoder as the config names them."""
    return "%s decoder on %s" % (overrides.get("decoder", "upernet"),
                                 overrides.get("arch", "?"))


def model_card(report: Dict[str, Any]) -> str:
    """models/README.md: what the model is, how it was made, what it scores, and its limits."""
    s = report["settings"]
    ev = report["evaluations"]
    fp32 = ev["onnx_fp32"]
    prune = report["prune"]
    t_over, s_over = s["teacher"].get("overrides", {}), s["student"].get("overrides", {})
    data = s["data"]
    n_val = int(round(data["count"] * data["val_fraction"]))
    rows = [("teacher", "UPerNet-Swin-v2-T, %s-ch decoder, %s px"
             % (t_over.get("decoder_channels", "?"), t_over.get("input_size", "?")), "teacher"),
            ("student (distilled)", "%s, %s-ch decoder, %s px"
             % (_student_title(s_over), s_over.get("decoder_channels", "?"),
                s_over.get("input_size", "?")), "student"),
            ("pruned + distilled fine-tune", "%s pruning, amount %s"
             % (s["prune"]["method"], s["prune"]["amount"]), "pruned"),
            ("**default.onnx** (fp32)", "ONNX Runtime, CPU", "onnx_fp32")]
    if "onnx_fp16" in ev:
        rows.append(("default_fp16.onnx", "ONNX Runtime, CPU (fp16 arithmetic is slow on "
                     "CPUs; time it on a GPU)", "onnx_fp16"))
    table = ["| model | what | mIoU | Dice | params | GMACs | latency ms |",
             "|---|---|---|---|---|---|---|"]
    for title, what, key in rows:
        r = ev[key]
        params = r.get("params")
        table.append("| %s | %s | %s | %s | %s | %s | %s |"
                     % (title, what, fmt(r.get("miou"), "%.3f"), fmt(r.get("dice"), "%.3f"),
                        "n/a" if params is None else "%.2fM" % (params / 1e6),
                        fmt(r.get("gmacs"), "%.2f"), fmt(r.get("latency_ms"), "%.1f")))
    iou = fp32.get("per_class_iou") or {}
    good = [name for name, value in iou.items() if value is not None and value >= 0.3]
    found = ("Classes `default.onnx` segments with an IoU of at least 0.3 on these scenes: %s; "
             "it misses the others (per-class IoU in `default_model.json`)."
             % (", ".join(good) if good else "none"))
    files = "\n".join("- `%s` (%.1f MB)" % (name, info["bytes"] / 1e6)
                      for name, info in report["files"].items())
    machine = report["machine"]
    quick_warning = ("\n> **This card was written by a `--quick` run (a test of the chain at "
                     "tiny sizes): the model is not usable.**\n" if report["quick"] else "")
    return """# Default model
{quick_warning}
`default.onnx` is what `segmentation_node` and `bag_eval` load when no model is given.

**It was trained on synthetic scenes only** (`python -m training synth`: drawn UAV views of
floods, fires, volcanoes, earthquakes, snow and landslides with all 14 LPCV classes). It has
never seen a real image. Use it to run the demo, the node and the replay tools end to end;
do not expect it to segment real UAV footage. Its figures below are on synthetic validation
scenes and say nothing about the real task.

## How it was made

One command, {minutes:.0f} minutes on this machine ({cpu}, {cores} cores, shared with other
work while it ran; {threads_train} thread(s) per stage):

    {command}

Settings: `training/configs/default_model.yaml`. The stages (each a repository command; logs
and run folders in `{work}/`):

1. data: `python -m training synth --count {count} --size {size} --seed {seed}`:
   {n_train} train + {n_val} val synthetic scenes of {size} px.
2. teacher: UPerNet-Swin-v2-T (`training/configs/teacher.yaml`) at {t_size} px, {t_iters}
   iterations from scratch (no pretrained weights can be downloaded here). This is a very
   short run on a CPU: a weak teacher.
3. student: {s_title}, {s_dec}-channel decoder, {s_size} px input, trained on
   {s_crop} px crops for {s_iters} iterations with OHEM cross-entropy plus distillation
   from the teacher's logits (`training/configs/student.yaml`).
4. pruning: `python -m training prune --method {p_method} --target {p_target} --amount
   {p_amount}` (torch-pruning removes heads, MLP neurons, encoder filters and decoder channels
   for real), then {p_iters} iterations of distilled fine-tuning. Parameters {p_before:.2f}M ->
   {p_after:.2f}M, GMACs {g_before:.3f} -> {g_after:.3f} at {s_size} px.
5. export: `python -m training export --format onnx` (fp32) and `--fp16`, each checked against
   PyTorch before it is written.
6. evaluation: `python -m training evaluate --data <the synthetic data> --split val`.

## Results (synthetic val split, {n_val} scenes of {size} px)

{table}

{found}

mIoU: dataset-level confusion matrix; Dice: the LPCV 2023 challenge's per-image mean Dice.
Latency: median forward pass per image after warm-up on this CPU with {threads} thread(s)
(`python -m training evaluate`), model only (no pre/post-processing); PyTorch eager for the
checkpoints, ONNX Runtime for the `.onnx` files.
Exact figures: `models/default_model.json`.

## Files

{files}

## Train on the real LPCV 2023 data

The real dataset (not reachable from the machines this was built on) uses the organisers'
layout (`IMG/train`, `GT_Updated/train`, `IMG/val`, `GT/val`). With it at `DATA`:

    python -m training train --config training/configs/teacher.yaml --data DATA --out runs/teacher
    python -m training train --config training/configs/student.yaml --data DATA \\
        --out runs/student --teacher runs/teacher/best.safetensors
    python -m training prune --checkpoint runs/student/best.safetensors --data DATA \\
        --out runs/pruned --method all --target sparsity --amount 0.3 --finetune-iters 2000 \\
        --teacher runs/teacher/best.safetensors
    python -m training export --checkpoint runs/pruned/best.safetensors --format onnx \\
        --out models/default.onnx
    python -m training evaluate --checkpoint models/default.onnx --data DATA --split val \\
        --json val.json

Those configs use the paper's settings (512 px, 40k iterations: a GPU is needed).
Built {built} with Python {python}, torch {torch}, onnxruntime {ort}.
""".format(
        quick_warning=quick_warning, minutes=report["seconds"] / 60.0,
        work=report.get("work", "runs/default_model"),
        threads_train=s.get("threads") or "default",
        cpu=machine["cpu"],
        cores=machine["cores"], command=report["command"], count=data["count"],
        size=data["size"], seed=data["seed"], n_train=data["count"] - n_val, n_val=n_val,
        t_size=t_over.get("input_size", "?"), t_iters=t_over.get("iters", "?"),
        s_title=_student_title(s_over),
        s_dec=s_over.get("decoder_channels", "?"), s_size=s_over.get("input_size", "?"),
        s_crop=s_over.get("crop_size", "?"), s_iters=s_over.get("iters", "?"),
        p_method=s["prune"]["method"], p_target=s["prune"]["target"],
        p_amount=s["prune"]["amount"], p_iters=s["prune"]["finetune_iters"],
        p_before=prune["before"]["params"] / 1e6, p_after=prune["after"]["params"] / 1e6,
        g_before=prune["before"]["gmacs"], g_after=prune["after"]["gmacs"], table="\n".join(table),
        found=found,
        threads=(s.get("latency") or {}).get("threads", "default"), files=files,
        built=report["built"], python=machine["python"], torch=machine["torch"],
        ort=machine["onnxruntime"])


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, metavar="DIR",
                        help="where the model files and the card go (default: models/)")
    parser.add_argument("--work", type=Path, default=None, metavar="DIR",
                        help="run folders and logs (default: runs/default_model, or "
                             "runs/default_model_quick with --quick)")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, metavar="YAML",
                        help="settings (default: training/configs/default_model.yaml)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes and a few iterations per stage: a test of the chain")
    parser.add_argument("--resume", action="store_true",
                        help="reuse the stages WORK already finished")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="CPU threads per stage (default: the settings' threads)")
    parser.add_argument("--card-only", action="store_true",
                        help="only rewrite OUT/README.md from OUT/default_model.json")


def main(args: argparse.Namespace) -> int:
    work = args.work or (DEFAULT_WORK.with_name(DEFAULT_WORK.name + "_quick") if args.quick
                         else DEFAULT_WORK)
    if args.quick and args.out.resolve() == DEFAULT_OUT.resolve():
        print("default-model: error: --quick builds an unusable model; give it another --out "
              "than %s" % DEFAULT_OUT, file=sys.stderr)
        return 2
    if args.card_only:
        report_path = args.out / REPORT_NAME
        try:
            report = json.loads(report_path.read_text())
        except (OSError, ValueError) as error:
            print("default-model: error: cannot read %s: %s" % (report_path, error),
                  file=sys.stderr)
            return 1
        write_text_atomic(args.out / CARD_NAME, model_card(report))
        print("wrote %s" % (args.out / CARD_NAME))
        return 0
    try:
        settings = load_settings(args.config, args.quick)
        if args.threads:
            settings["threads"] = args.threads
        report = build(settings, args.out, work, resume=args.resume, quick=args.quick)
    except DefaultModelError as error:
        print("default-model: error: %s" % error, file=sys.stderr)
        return 1
    fp32 = report["evaluations"]["onnx_fp32"]
    print("default model: %s (mIoU %s, Dice %s on the synthetic val split, %.1f ms median "
          "here); card %s; %.0f s in all"
          % (args.out / "default.onnx", fmt(fp32.get("miou"), "%.3f"),
             fmt(fp32.get("dice"), "%.3f"),
             fp32.get("latency_ms") or float("nan"), args.out / CARD_NAME, report["seconds"]))
    return 0
