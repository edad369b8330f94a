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
  checkpoint                              with strided exports: the pruned checkpoint with the
                                          same output_stride in its metadata, so that the
                                          PyTorch back end returns the same logits
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
import subprocess
import sys
import time
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from lpcv_segmentation.core.fileio import copy_file_atomic, write_json_atomic, write_text_atomic
from lpcv_segmentation.core.formatting import fmt, markdown_table
from training.config import load_yaml_mapping
from training.lab import report as report_lib
from training.lab.settings import TrainSettings, override_list
from training.lab.stages import StageRunner
from training.pruning.settings import PruneError, PruneSettings

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = ROOT / "training" / "configs" / "default_model.yaml"
DEFAULT_OUT = ROOT / "models"
DEFAULT_WORK = ROOT / "runs" / "default_model"
REPORT_NAME = "default_model.json"
CARD_NAME = "README.md"
CARD_TEMPLATE = Path(__file__).resolve().parent / "model_card_template.md"  # str.format fields
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


@dataclass(frozen=True)
class SynthSettings:
    """The ``data`` section: ``python -m training synth`` options."""
    count: int
    size: int
    seed: int
    val_fraction: float

    def arguments(self) -> List[Any]:
        return ["--count", self.count, "--size", self.size, "--seed", self.seed,
                "--val-fraction", self.val_fraction]


@dataclass(frozen=True)
class DefaultModelSettings:
    """The default-model YAML as typed settings, built and checked once (``from_mapping``).
    ``mapping`` is the YAML as read (with ``quick`` merged): what the report and card record."""
    data: SynthSettings
    teacher: TrainSettings
    student: TrainSettings
    prune: PruneSettings
    prune_overrides: Tuple[str, ...]
    export_fp16: bool
    export_output_stride: str
    export_input_size: Optional[int]
    verify_images: int
    latency_warmup: int
    latency_threads: Optional[int]
    threads: Optional[int]
    mapping: Dict[str, Any] = field(compare=False)

    @classmethod
    def from_mapping(cls, mapping: Dict[str, Any], path: Any = "settings"
                     ) -> "DefaultModelSettings":
        """DefaultModelError naming ``path`` and the section when a section is missing or a
        value cannot be used."""
        for section in ("data", "teacher", "student", "prune", "export"):
            if not isinstance(mapping.get(section), dict):
                raise DefaultModelError("%s: section %r missing" % (path, section))
        synth, pruning, export = mapping["data"], mapping["prune"], mapping["export"]
        latency = mapping.get("latency") or {}
        try:
            data = SynthSettings(int(synth["count"]), int(synth["size"]), int(synth["seed"]),
                                 float(synth["val_fraction"]))
            prune = PruneSettings(method=pruning["method"], amount=pruning["amount"],
                                  target=pruning["target"],
                                  finetune_iters=int(pruning["finetune_iters"])).validate()
            settings = cls(
                data=data, teacher=TrainSettings.from_section(mapping["teacher"]),
                student=TrainSettings.from_section(mapping["student"]), prune=prune,
                prune_overrides=tuple(override_list(pruning.get("overrides"))),
                export_fp16=bool(export.get("fp16", True)),
                export_output_stride=str(export.get("output_stride", "full")),
                export_input_size=(int(export["input_size"]) if export.get("input_size")
                                   else None),
                verify_images=int(export["verify_images"]),
                latency_warmup=int(latency.get("warmup", 3)),
                latency_threads=latency.get("threads"), threads=mapping.get("threads"),
                mapping=mapping)
        except KeyError as error:
            raise DefaultModelError("%s: key %s missing" % (path, error))
        except (PruneError, TypeError, ValueError) as error:
            raise DefaultModelError("%s: %s" % (path, error))
        from training.export import OUTPUT_STRIDES
        if settings.export_output_stride not in OUTPUT_STRIDES:
            raise DefaultModelError("%s: export output_stride must be one of %s, got %r"
                                    % (path, ", ".join(OUTPUT_STRIDES),
                                       settings.export_output_stride))
        for name in ("teacher", "student"):
            getattr(settings, name).validate(DefaultModelError, "%s: section %r: " % (path, name))
        return settings

    def with_threads(self, threads: Optional[int]) -> "DefaultModelSettings":
        """These settings with ``threads`` per stage (the command's --threads), if given."""
        if not threads:
            return self
        return replace(self, threads=threads, mapping=dict(self.mapping, threads=threads))


def load_settings(path: Path, quick: bool = False) -> DefaultModelSettings:
    """The YAML settings, with its ``quick`` section merged on top when asked."""
    mapping = load_yaml_mapping(os.fspath(path), DefaultModelError, "settings")
    quick_settings = mapping.pop("quick", {}) or {}
    if quick:
        mapping = _merge(mapping, quick_settings)
    return DefaultModelSettings.from_mapping(mapping, path)


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
def build(settings: DefaultModelSettings, out: Path, work: Path, resume: bool = False,
          quick: bool = False, echo: bool = True) -> Dict[str, Any]:
    """Run every stage; returns the report written to OUT/default_model.json."""
    if work.exists() and any(work.iterdir()) and not resume:
        raise DefaultModelError("%s already holds a build; pass --resume to reuse its finished "
                                "stages, or choose another --work" % work)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    chain = Chain(work, resume, echo, settings.threads)
    started = time.time()
    data = work / "data"
    teacher, student, pruned = work / "teacher", work / "student", work / "pruned"
    prune = settings.prune

    chain.run("data", ["synth", "--out", data] + settings.data.arguments(),
              data / "synthetic.json")
    chain.run("teacher", ["train", "--config", settings.teacher.config_path, "--data", data,
                          "--out", teacher] + list(settings.teacher.overrides), teacher / BEST)
    chain.run("student", ["train", "--config", settings.student.config_path, "--data", data,
                          "--out", student, "--teacher", teacher / BEST]
              + list(settings.student.overrides), student / BEST)
    chain.run("prune", ["prune", "--checkpoint", student / BEST, "--data", data, "--out", pruned,
                        "--method", prune.method, "--target", prune.target, "--amount",
                        prune.amount, "--finetune-iters", prune.finetune_iters, "--teacher",
                        teacher / BEST] + list(settings.prune_overrides), pruned / "prune.json")

    models = {"fp32": work / "default.onnx"}
    export_options = ["--output-stride", settings.export_output_stride]
    if settings.export_input_size:
        export_options += ["--input-size", settings.export_input_size]
    chain.run("export_fp32", ["export", "--checkpoint", pruned / BEST, "--format", "onnx",
                              "--out", models["fp32"], "--verify-images", settings.verify_images,
                              "--json", work / "export_fp32.json"] + export_options, models["fp32"],
              in_process=True)
    if settings.export_fp16:
        models["fp16"] = work / "default_fp16.onnx"
        chain.run("export_fp16", ["export", "--checkpoint", pruned / BEST, "--format", "onnx",
                                  "--fp16", "--out", models["fp16"], "--verify-images",
                                  settings.verify_images, "--json", work / "export_fp16.json"]
                  + export_options, models["fp16"], in_process=True)

    checkpoint = pruned / BEST
    exported = json.loads((work / "export_fp32.json").read_text())
    stride, size = int(exported.get("output_stride", 1)), int(exported["input_size"])
    if stride > 1 or settings.export_input_size:
        checkpoint = work / "default.safetensors"
        chain.runner.run("checkpoint", checkpoint,
                         lambda: shipped_checkpoint(pruned / BEST, checkpoint, stride, size),
                         "%s with input_size %d and output_stride %d in its metadata"
                         % (pruned / BEST, size, stride))

    # Every stage's model on the same val images; latency of the ONNX files on this CPU.
    evaluated = {"teacher": teacher / BEST, "student": student / BEST, "pruned": checkpoint,
                 "onnx_fp32": models["fp32"]}
    if "fp16" in models:
        evaluated["onnx_fp16"] = models["fp16"]
    evaluations: Dict[str, Dict[str, Any]] = {}
    for name, model in evaluated.items():
        result = work / ("eval_%s.json" % name)
        args = ["evaluate", "--checkpoint", model, "--data", data, "--split", "val",
                "--json", result, "--warmup", settings.latency_warmup]
        if settings.latency_threads:
            args += ["--threads", settings.latency_threads]
        chain.run("evaluate_%s" % name, args, result, in_process=True)
        evaluations[name] = json.loads(result.read_text())

    # Publish: copy the files into OUT, then the report and the card.
    shipped = {"default.onnx": models["fp32"], "default.safetensors": checkpoint}
    if "fp16" in models:
        shipped["default_fp16.onnx"] = models["fp16"]
    for name, source in shipped.items():
        copy_file_atomic(source, out / name)
    report = {
        "command": "python -m training default-model" + (" --quick" if quick else ""),
        "quick": quick,
        "work": _relative(work),
        "settings": settings.mapping,
        "files": {name: {"bytes": (out / name).stat().st_size} for name in sorted(shipped)},
        "prune": json.loads((pruned / "prune.json").read_text()),
        "export": {"fp32": json.loads((work / "export_fp32.json").read_text())},
        "evaluations": evaluations,
        "stages": chain.stages,
        "machine": report_lib.machine_description(),
        "seconds": round(time.time() - started + _carry_stage_seconds(work, chain.stages), 1),
        "built": time.strftime("%Y-%m-%d"),
    }
    if "fp16" in models:
        report["export"]["fp16"] = json.loads((work / "export_fp16.json").read_text())
    write_json_atomic(out / REPORT_NAME, report)
    write_json_atomic(work / REPORT_NAME, report)  # a later --resume takes its stage times
    write_text_atomic(out / CARD_NAME, model_card(report))
    return report


def shipped_checkpoint(source: Path, out: Path, stride: int, size: int) -> None:
    """``source`` saved to ``out`` as the ONNX export runs it: at input ``size`` (a size-flexible
    encoder) and, when ``stride`` > 1, with ``output_stride`` in its metadata, so that the
    PyTorch back end runs ``model(x, full_res=False)`` as the strided export does
    (docs/runtime.md)."""
    from lpcv_segmentation.model.checkpoint import load_checkpoint, save_checkpoint
    model, meta = load_checkpoint(os.fspath(source))
    model.input_size = int(size)
    extra = {"output_stride": int(stride)} if stride > 1 else {}
    save_checkpoint(os.fspath(out), model, dict(meta, **extra))


def _carry_stage_seconds(work: Path, stages: List[Dict[str, Any]]) -> float:
    """Give each stage this --resume run reused the seconds an earlier build in ``work``
    recorded for it (WORK/default_model.json); returns their sum, which the build's time adds."""
    try:
        earlier = json.loads((work / REPORT_NAME).read_text()).get("stages", [])
    except (OSError, ValueError):
        return 0.0
    seconds = {s["stage"]: s["seconds"] for s in earlier if "seconds" in s}
    carried = 0.0
    for record in stages:
        if record.get("reused") and record["stage"] in seconds:
            record["seconds"] = seconds[record["stage"]]
            carried += float(record["seconds"])
    return carried


def _relative(path: Path) -> str:
    """``path`` relative to the repository when inside it (cards are committed)."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


# --------------------------------------------------------------------------------------------
# The model card
# --------------------------------------------------------------------------------------------
def _student_title(overrides: Dict[str, Any]) -> str:
    """The student's encoder and decoder as the config names them."""
    return "%s decoder on %s" % (overrides.get("decoder", "upernet"),
                                 overrides.get("arch", "?"))


def _results_table(report: Dict[str, Any]) -> str:
    """Every stage's model on the synthetic val split: the card's results table."""
    settings, evaluations = report["settings"], report["evaluations"]
    teacher = settings["teacher"].get("overrides", {})
    student = settings["student"].get("overrides", {})
    rows = [("teacher", "UPerNet-Swin-v2-T, %s-ch decoder, %s px"
             % (teacher.get("decoder_channels", "?"), teacher.get("input_size", "?")), "teacher"),
            ("student (distilled)", "%s, %s-ch decoder, %s px"
             % (_student_title(student), student.get("decoder_channels", "?"),
                student.get("input_size", "?")), "student"),
            ("pruned + distilled fine-tune", "%s pruning, amount %s"
             % (settings["prune"]["method"], settings["prune"]["amount"]), "pruned"),
            ("**default.onnx** (fp32)", "ONNX Runtime, CPU", "onnx_fp32")]
    if "onnx_fp16" in evaluations:
        rows.append(("default_fp16.onnx", "ONNX Runtime, CPU (fp16 arithmetic is slow on "
                     "CPUs; time it on a GPU)", "onnx_fp16"))
    cells = []
    for title, what, key in rows:
        r = evaluations[key]
        params = r.get("params")
        cells.append([title, what, fmt(r.get("miou"), "%.3f"), fmt(r.get("dice"), "%.3f"),
                      "n/a" if params is None else "%.2fM" % (params / 1e6),
                      fmt(r.get("gmacs"), "%.2f"), fmt(r.get("latency_ms"), "%.1f")])
    return markdown_table(["model", "what", "mIoU", "Dice", "params", "GMACs", "latency ms"],
                          cells)


def trained_on_table() -> str:
    """The card's table of every shipped and zoo model and the data it was trained on."""
    from lpcv_segmentation.zoo import MODELS
    rows = [("`default.onnx`, `default_fp16.onnx`, `default.safetensors`", "shipped in `models/`",
             "drawn synthetic scenes only (`python -m training synth`); never a real image")]
    rows += [("`%s`" % m.spec, "model zoo: `python -m lpcv_segmentation.zoo fetch %s` (%s; docs/zoo.md)"
              % (m.name, m.licence), m.trained_on) for m in MODELS.values()]
    rows.append(("a student of `python -m training distill`", "your run folder",
                 "your frames, labelled by its teacher (docs/zoo.md)"))
    return markdown_table(("model", "where it comes from", "trained on"), rows)


def _export_logits(report: Dict[str, Any]) -> str:
    """The card's sentences on the exported graph: its input size when it is not the one the
    student was trained at, and where the logits are (the export records both)."""
    exported = report["export"]["fp32"]
    stride, size = int(exported.get("output_stride", 1)), int(exported["input_size"])
    trained = (report["settings"]["student"].get("overrides") or {}).get("input_size")
    text = ""
    if trained and int(trained) != size:
        text = ("Exported at %d px (`--input-size %d`; trained at %s px, the encoder is "
                "size-flexible), as `default.safetensors` records too. " % (size, size, trained))
    if stride == 1:
        return text + "The logits are resized to the input size inside the graph."
    return text + ("With `--output-stride native`: the logits stay at the decoder's stride (1/%d "
                   "of the input, metadata `output_stride: %d`) and the runtime upsamples the "
                   "label map (docs/runtime.md, strided models), which costs less than resizing "
                   "14 logit maps. `default.safetensors` records the same `output_stride`, so the "
                   "PyTorch back end returns the same strided logits (the pruned row below is "
                   "measured so; the teacher and student rows at full size)." % (stride, stride))


def _reused_note(report: Dict[str, Any]) -> str:
    """How many stages a --resume build took from an earlier run (their time is not counted)."""
    reused = [s["stage"] for s in report.get("stages", [])
              if s.get("reused") and "seconds" not in s]
    if not reused:
        return ""
    return (" (not counting %s, reused from an earlier run with `--resume`; their logs in "
            "`%s/logs/`)" % (", ".join(reused), report.get("work", "runs/default_model")))


def card_fields(report: Dict[str, Any]) -> Dict[str, Any]:
    """The values the model card template (CARD_TEMPLATE) names, from the build's report."""
    settings, machine, prune = report["settings"], report["machine"], report["prune"]
    teacher = settings["teacher"].get("overrides", {})
    student = settings["student"].get("overrides", {})
    data = settings["data"]
    n_val = int(round(data["count"] * data["val_fraction"]))
    iou = report["evaluations"]["onnx_fp32"].get("per_class_iou") or {}
    good = [name for name, value in iou.items() if value is not None and value >= 0.3]
    return {
        "quick_warning": ("\n> **This card was written by a `--quick` run (a test of the chain at "
                          "tiny sizes): the model is not usable.**\n" if report["quick"] else ""),
        "minutes": report["seconds"] / 60.0, "work": report.get("work", "runs/default_model"),
        "reused": _reused_note(report),
        "threads_train": settings.get("threads") or "default", "cpu": machine["cpu"],
        "cores": machine["cores"], "command": report["command"],
        "count": data["count"], "size": data["size"], "seed": data["seed"],
        "n_train": data["count"] - n_val, "n_val": n_val,
        "t_size": teacher.get("input_size", "?"), "t_iters": teacher.get("iters", "?"),
        "s_title": _student_title(student), "s_dec": student.get("decoder_channels", "?"),
        "s_size": student.get("input_size", "?"), "s_crop": student.get("crop_size", "?"),
        "s_iters": student.get("iters", "?"),
        "p_method": settings["prune"]["method"], "p_target": settings["prune"]["target"],
        "p_amount": settings["prune"]["amount"], "p_iters": settings["prune"]["finetune_iters"],
        "p_before": prune["before"]["params"] / 1e6, "p_after": prune["after"]["params"] / 1e6,
        "export_logits": _export_logits(report),
        "g_before": prune["before"]["gmacs"], "g_after": prune["after"]["gmacs"],
        "table": _results_table(report), "trained_on": trained_on_table(),
        "found": ("Classes `default.onnx` segments with an IoU of at least 0.3 on these scenes: "
                  "%s; it misses the others (per-class IoU in `default_model.json`)."
                  % (", ".join(good) if good else "none")),
        "threads": (settings.get("latency") or {}).get("threads", "default"),
        "files": "\n".join("- `%s` (%.1f MB)" % (name, info["bytes"] / 1e6)
                           for name, info in report["files"].items()),
        "built": report["built"], "python": machine["python"], "torch": machine["torch"],
        "ort": machine["onnxruntime"],
    }


def model_card(report: Dict[str, Any]) -> str:
    """models/README.md: what the model is, how it was made, what it scores, and its limits
    (CARD_TEMPLATE filled from the build's report)."""
    return CARD_TEMPLATE.read_text(encoding="utf-8").format(**card_fields(report))


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
        settings = load_settings(args.config, args.quick).with_threads(args.threads)
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
