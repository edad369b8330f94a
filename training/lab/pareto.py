"""Accuracy against latency for each decoder, pruning amount and input size: one command.

  python -m training pareto --config training/configs/pareto_cpu.yaml --data DIR --out DIR [--resume]

For every seed and decoder of the config it trains a student (``python -m training train``
with the config's overrides and ``decoder=...``), prunes it at each amount with fine-tuning
(``training.pruning.request.prune_and_finetune``), exports every model as fp32 ONNX at every input size
(``training.export.export_onnx``) and evaluates each file on the val split with ONNX Runtime
(``training.evaluate.evaluate``). The first seed's files are then timed together by the
block-interleaved timer (``training.lab.sweep.onnx_latency_ms``), so machine load touches them
alike. Writes:

  OUT/pareto.csv   one row per point: decoder, amount, input size, GMACs, params, mIoU (mean
                   over seeds, and each seed's), ONNX Runtime latency, on the Pareto front?
  OUT/pareto.md    the same as a Markdown table under a dated header (machine, command, models)
  OUT/pareto.png   mIoU against latency, one colour per decoder, one marker per amount

Every stage writes its result before the next starts; --resume reuses what OUT holds, so an
interrupted run continues where it stopped.
"""
import argparse
import csv
import json
import os
import shlex
import statistics
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple


from lpcv_segmentation.core.fileio import atomic_path, write_json_atomic, write_text_atomic
from lpcv_segmentation.core.formatting import markdown_table
from training.config import load_yaml_mapping
from training.lab import report as report_lib
from training.lab.settings import EvaluationSettings, TrainSettings, override_list
from training.pruning.settings import FinetuneSettings, PruneError, PruneSettings

CSV_NAME, MD_NAME, PNG_NAME, LATENCY_JSON = "pareto.csv", "pareto.md", "pareto.png", "latency.json"
CSV_COLUMNS = ("decoder", "amount", "input_size", "params", "gmacs", "miou", "miou_seeds",
               "latency_ms", "threads", "pareto")
DEFAULTS: Dict[str, Any] = {
    "train_config": "training/configs/student.yaml",
    "overrides": {},
    "decoders": ["upernet", "upernet_lite"],
    "seeds": [0],
    "amounts": [0.3, 0.5],
    "prune": {"method": "all", "importance": "taylor", "allocation": "local", "round_to": 8,
              "finetune_iters": 100},
    "input_sizes": [256, 288, 320],
    "evaluate": {"threads": 1, "eval_limit": None, "latency_runs": 30},
}
DECODER_STYLE = {"upernet": "tab:blue", "upernet_lite": "tab:orange"}
AMOUNT_MARKER = {0.0: "o", 0.3: "s", 0.5: "D"}


class ParetoError(ValueError):
    """A pareto request that cannot run; the message names the key or file."""


def load_pareto_config(path: str) -> Dict[str, Any]:
    """The config file over DEFAULTS; unknown keys and decoders are errors naming the file."""
    from lpcv_segmentation.model.decoders import DECODERS
    data = load_yaml_mapping(path, ParetoError, "--config")
    unknown = sorted(set(data) - set(DEFAULTS))
    if unknown:
        raise ParetoError("%s: unknown key %r (known: %s)" % (path, unknown[0], ", ".join(DEFAULTS)))
    config = {k: (dict(v, **data.get(k, {})) if isinstance(v, dict) and k != "overrides"
                  else data.get(k, v)) for k, v in DEFAULTS.items()}
    for name in config["decoders"]:
        if name not in DECODERS:
            raise ParetoError("%s: decoder %r is not one of %s" % (path, name, ", ".join(DECODERS)))
    try:
        for amount in config["amounts"]:
            prune_settings(config, amount)
    except (PruneError, TypeError) as e:  # TypeError: a key PruneSettings does not have
        raise ParetoError("%s: prune: %s" % (path, e))
    evaluation_settings(config).validate(ParetoError, lambda key: "%s: evaluate: %s" % (path, key))
    if not config["seeds"] or not config["input_sizes"]:
        raise ParetoError("%s: seeds and input_sizes must not be empty" % path)
    return config


def prune_settings(config: Dict[str, Any], amount: float) -> PruneSettings:
    """The config's pruning request at ``amount``, checked (PruneError)."""
    return PruneSettings(amount=amount, **config["prune"]).validate()


def evaluation_settings(config: Dict[str, Any]) -> EvaluationSettings:
    """How every point is measured (the config's ``evaluate`` section)."""
    return EvaluationSettings(**config["evaluate"])


# --------------------------------------------------------------------------------------------
# The runs
# --------------------------------------------------------------------------------------------
def train_settings(config: Dict[str, Any], decoder: str, seed: int) -> TrainSettings:
    """The student of ``decoder`` with ``seed``: the config's train config and overrides."""
    return TrainSettings(config["train_config"], tuple(override_list(
        dict(config["overrides"], decoder=decoder, seed=int(seed)))))


def model_dir(out: str, seed: int, decoder: str, amount: float) -> str:
    return os.path.join(out, "seed%d" % seed, decoder, "none" if not amount else "prune_%g" % amount)


def point_key(decoder: str, amount: float, size: int) -> str:
    return "%s_%g_%d" % (decoder, amount, size)


def run_pareto(config: Dict[str, Any], data: str, out: str, resume: bool = False,
               progress: bool = True) -> List[Dict[str, Any]]:
    """Train, prune, export and evaluate every point (see the module doc); returns the rows."""
    from tqdm import tqdm

    from training.evaluate import Runtime, evaluate
    from training.export import export_onnx
    from training.lab.stages import StageRunner
    from training.pruning.request import prune_and_finetune

    stages = StageRunner(resume)
    seeds, decoders = [int(s) for s in config["seeds"]], list(config["decoders"])
    amounts = [0.0] + [float(a) for a in config["amounts"]]
    sizes = [int(s) for s in config["input_sizes"]]
    evaluation = evaluation_settings(config)
    total = len(seeds) * len(decoders) * (len(amounts) + len(amounts) * len(sizes))
    bar = tqdm(total=total, desc="pareto", unit="stage", disable=not progress)
    evals: Dict[Tuple[int, str, float, int], Dict[str, Any]] = {}
    for seed in seeds:
        for decoder in decoders:
            trained = os.path.join(model_dir(out, seed, decoder, 0.0), "best.safetensors")
            stages.run("train seed %d %s" % (seed, decoder), trained, lambda: train_settings(
                config, decoder, seed).run(data, os.path.dirname(trained)))
            bar.update()
            for amount in amounts:
                ckpt = trained
                if amount:
                    prune_dir = model_dir(out, seed, decoder, amount)
                    ckpt = os.path.join(prune_dir, "best.safetensors")
                    settings = prune_settings(config, amount)
                    stages.run("prune seed %d %s %g" % (seed, decoder, amount), ckpt,
                               lambda: prune_and_finetune(
                                   trained, data, prune_dir, settings,
                                   FinetuneSettings.of(overrides=["seed=%d" % seed]),
                                   progress=False))
                    bar.update()
                for size in sizes:
                    point_dir = os.path.join(model_dir(out, seed, decoder, amount), "px%d" % size)
                    result_path = os.path.join(point_dir, "eval.json")

                    def measure(ckpt=ckpt, point_dir=point_dir, size=size,
                                result_path=result_path) -> None:
                        onnx_path = os.path.join(point_dir, "model.onnx")
                        report = export_onnx(ckpt, onnx_path, input_size=size, verify_images=1)
                        result = evaluate(onnx_path, data, "val", Runtime(
                            "onnxruntime", threads=evaluation.threads),
                            limit=evaluation.eval_limit, progress=False)
                        result.update(onnx=os.path.abspath(onnx_path), export=report)
                        write_json_atomic(result_path, result)

                    stages.run("evaluate seed %d %s %g %d px" % (seed, decoder, amount, size),
                               result_path, measure)
                    with open(result_path, "r", encoding="utf-8") as handle:
                        evals[(seed, decoder, amount, size)] = json.load(handle)
                    bar.update()
    bar.close()
    latency = time_first_seed(evals, seeds[0], out, evaluation, resume)
    return table_rows(evals, latency, seeds, decoders, amounts, sizes, evaluation.threads)


def time_first_seed(evals: Dict[Tuple[int, str, float, int], Dict[str, Any]], seed: int, out: str,
                    evaluation: EvaluationSettings, resume: bool) -> Dict[str, float]:
    """{point key: median ms} of the first seed's files, all timed in one interleaved run."""
    from training.lab.sweep import onnx_latency_ms
    path = os.path.join(out, LATENCY_JSON)
    files = {point_key(d, a, s): e["onnx"] for (sd, d, a, s), e in evals.items() if sd == seed}
    if resume and os.path.isfile(path):
        with open(path, "r", encoding="utf-8") as handle:
            latency = json.load(handle)
        if set(latency) == set(files):  # timed together with exactly these files
            return latency
    print("== timing %d files interleaved (%s thread(s), %d runs each)"
          % (len(files), evaluation.threads, evaluation.latency_runs), file=sys.stderr)
    latency = onnx_latency_ms(files, threads=evaluation.threads, runs=evaluation.latency_runs)
    write_json_atomic(path, latency)
    return latency


def pareto_front(rows: Sequence[Dict[str, Any]]) -> List[bool]:
    """Each row is on the front when no other row is at least as fast and as accurate and
    strictly better in one of the two."""
    flags = []
    for r in rows:
        flags.append(not any(o is not r and o["latency_ms"] <= r["latency_ms"] and o["miou"] >= r["miou"]
                             and (o["latency_ms"] < r["latency_ms"] or o["miou"] > r["miou"])
                             for o in rows))
    return flags


def table_rows(evals: Dict[Tuple[int, str, float, int], Dict[str, Any]], latency: Dict[str, float],
               seeds: Sequence[int], decoders: Sequence[str], amounts: Sequence[float],
               sizes: Sequence[int], threads: Optional[int]) -> List[Dict[str, Any]]:
    rows = []
    for decoder in decoders:
        for amount in amounts:
            for size in sizes:
                first = evals[(seeds[0], decoder, amount, size)]
                per_seed = [evals[(s, decoder, amount, size)]["miou"] for s in seeds]
                meta = first["export"]
                rows.append({"decoder": decoder, "amount": amount, "input_size": size,
                             "params": meta.get("params"), "gmacs": meta.get("gmacs"),
                             "miou": statistics.mean(per_seed),
                             "miou_seeds": " ".join("%.4f" % m for m in per_seed),
                             "latency_ms": latency[point_key(decoder, amount, size)],
                             "threads": threads})
    for row, on_front in zip(rows, pareto_front(rows)):
        row["pareto"] = on_front
    return rows


# --------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------
def write_csv(rows: Sequence[Dict[str, Any]], path: str) -> None:
    import io
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, buffer.getvalue())


def markdown(rows: Sequence[Dict[str, Any]], command: str, models: Sequence[str],
             made: Optional[Dict[str, Any]] = None) -> str:
    """OUT/pareto.md: the dated report header (``training.lab.report``) over the table."""
    table = markdown_table(
        ["decoder", "pruned", "input", "params (M)", "GMACs", "mIoU (mean of seeds)",
         "mIoU per seed", "ORT latency (ms)", "Pareto"],
        [[r["decoder"], "%g" % r["amount"], r["input_size"], "%.2f" % ((r["params"] or 0) / 1e6),
          "%.3f" % (r["gmacs"] or 0.0), "%.4f" % r["miou"], r["miou_seeds"],
          "%.2f" % r["latency_ms"], "yes" if r["pareto"] else ""] for r in rows])
    return "%s\nLatency: ONNX Runtime CPU, %s thread(s), interleaved.\n\n%s\n" % (
        report_lib.header("mIoU against ONNX Runtime latency", command, models, made),
        rows[0]["threads"] if rows else "?", table)


def trained_models(config: Dict[str, Any], out: str) -> List[str]:
    """The students the run trained (each pruned and exported at every point), for the report."""
    return ["seed %d %s `%s`" % (seed, decoder, os.path.join(model_dir(out, int(seed), decoder, 0.0),
                                                             "best.safetensors"))
            for seed in config["seeds"] for decoder in config["decoders"]]


def plot(rows: Sequence[Dict[str, Any]], path: str, title: str = "") -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for decoder in dict.fromkeys(r["decoder"] for r in rows):
        for amount in dict.fromkeys(r["amount"] for r in rows):
            pts = sorted((r for r in rows if r["decoder"] == decoder and r["amount"] == amount),
                         key=lambda r: r["input_size"])
            ax.plot([r["latency_ms"] for r in pts], [r["miou"] for r in pts], linestyle=":",
                    marker=AMOUNT_MARKER.get(amount, "x"), color=DECODER_STYLE.get(decoder, "gray"),
                    label="%s, pruned %g" % (decoder, amount) if amount else "%s, unpruned" % decoder)
            for r in pts:
                ax.annotate(str(r["input_size"]), (r["latency_ms"], r["miou"]), fontsize=7,
                            textcoords="offset points", xytext=(3, 3))
    front = sorted((r for r in rows if r["pareto"]), key=lambda r: r["latency_ms"])
    ax.step([r["latency_ms"] for r in front], [r["miou"] for r in front], where="post",
            color="black", alpha=0.4, label="Pareto front")
    ax.set_xlabel("ONNX Runtime latency, ms (CPU, %s thread(s))" % (rows[0]["threads"] if rows else "?"))
    ax.set_ylabel("mIoU (synthetic val)")
    ax.set_title(title or "mIoU against latency (labels: input size, px)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="pareto YAML (training/configs/pareto_cpu.yaml)")
    parser.add_argument("--data", required=True, help="dataset root in the LPCV layout (train and val)")
    parser.add_argument("--out", required=True, help="folder for the runs, pareto.csv/.md/.png")
    parser.add_argument("--resume", action="store_true", help="reuse every stage OUT already holds")


def main(args: argparse.Namespace) -> int:
    from lpcv_segmentation.model.checkpoint import CheckpointError
    from training.train import TrainingError
    try:
        config = load_pareto_config(args.config)
        if not os.path.isdir(args.data):
            raise ParetoError("--data %s is not a folder" % args.data)
        rows = run_pareto(config, args.data, args.out, resume=args.resume)
    except (ParetoError, CheckpointError, PruneError, TrainingError) as exc:
        print("pareto: %s" % exc, file=sys.stderr)
        return 1
    command = "python -m training pareto " + " ".join(
        shlex.quote(a) for a in ("--config", args.config, "--data", args.data, "--out", args.out))
    write_csv(rows, os.path.join(args.out, CSV_NAME))
    text = markdown(rows, command, trained_models(config, args.out), report_lib.stamp())
    write_text_atomic(os.path.join(args.out, MD_NAME), text)
    plot(rows, os.path.join(args.out, PNG_NAME))
    print(text)
    return 0
