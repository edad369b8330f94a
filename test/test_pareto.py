"""The Pareto command end to end at tiny sizes: both decoders trained, pruned, exported,
evaluated and timed together; an interrupted run resumes without redoing work;
bad configs fail before any work."""
import csv
import os
import re
from pathlib import Path

import pytest
import yaml

from training.lab import pareto

TINY = {
    "overrides": {"arch": "mobilevit_xxs", "input_size": 64, "crop_size": 64, "decoder_channels": 16,
                  "batch_size": 2, "workers": 0, "iters": 2, "warmup_iters": 0, "eval_every": 2,
                  "ohem_min_kept": 100, "max_eval_images": 2},
    "decoders": ["upernet", "upernet_lite"],
    "seeds": [0],
    "amounts": [0.5],
    "prune": {"importance": "l2", "finetune_iters": 1},
    "input_sizes": [64],  # each size is one more export per model (the slow part)
    "evaluate": {"threads": 1, "eval_limit": 2, "latency_runs": 2},
}


def front(points, slack=(0.0, 0.0)):
    """This test's own Pareto front of (latency, mIoU) points: True where no other point is as
    fast or faster and as accurate or more, and better in one. With ``slack`` (figures rounded
    to it), a flag is given only where rounding cannot change it, else None."""
    dl, dm = slack
    flags = []
    for i, (latency, miou) in enumerate(points):
        others = [p for j, p in enumerate(points) if j != i]
        surely_dominated = any(lo < latency - 2 * dl and mo > miou + 2 * dm
                               if slack != (0.0, 0.0) else
                               lo <= latency and mo >= miou and (lo < latency or mo > miou)
                               for lo, mo in others)
        maybe_dominated = any(lo <= latency + 2 * dl and mo >= miou - 2 * dm for lo, mo in others)
        flags.append(False if surely_dominated else True if not maybe_dominated else None)
    return flags


def _config(tmp_path, **changes):
    path = tmp_path / "pareto.yaml"
    path.write_text(yaml.safe_dump(dict(TINY, **changes)))
    return str(path)


@pytest.mark.slow
def test_pareto_writes_table_and_figure_and_resumes(synth_dataset, tmp_path):
    out = str(tmp_path / "out")
    config = pareto.load_pareto_config(_config(tmp_path))
    rows = pareto.run_pareto(config, str(synth_dataset), out, progress=False)
    assert [(r["decoder"], r["amount"], r["input_size"]) for r in rows] == [
        (d, a, 64) for d in ("upernet", "upernet_lite") for a in (0.0, 0.5)]
    for r in rows:
        assert 0.0 <= r["miou"] <= 1.0 and r["latency_ms"] > 0
    gmacs = {(r["decoder"], r["amount"], r["input_size"]): r["gmacs"] for r in rows}
    assert gmacs[("upernet_lite", 0.0, 64)] < gmacs[("upernet", 0.0, 64)]
    assert gmacs[("upernet", 0.5, 64)] < gmacs[("upernet", 0.0, 64)]
    assert [r["pareto"] for r in rows] == front([(r["latency_ms"], r["miou"]) for r in rows])
    pareto.write_csv(rows, os.path.join(out, pareto.CSV_NAME))
    pareto.plot(rows, os.path.join(out, pareto.PNG_NAME))
    with open(os.path.join(out, pareto.CSV_NAME)) as handle:
        assert len(list(csv.DictReader(handle))) == len(rows)
    assert os.path.getsize(os.path.join(out, pareto.PNG_NAME)) > 10000
    # the dated report: provenance lines, then one table row per point
    from training.lab.report import stamp
    text = pareto.markdown(rows, "python -m training pareto ...",
                           pareto.trained_models(config, out), stamp())
    assert text.startswith("# mIoU against ONNX Runtime latency\n")
    for line in ("- Date: ", "- Machine: ", "- Command: `python -m training pareto ...`",
                 "- Models: seed 0 upernet `%s" % out):
        assert "\n" + line in text, line
    assert sum(line.startswith("| upernet") for line in text.splitlines()) == len(rows)
    # Resuming reuses every stage (nothing retrained: the checkpoints keep their times).
    trained = os.path.join(pareto.model_dir(out, 0, "upernet_lite", 0.0), "best.safetensors")
    stamp = os.path.getmtime(trained)
    again = pareto.run_pareto(config, str(synth_dataset), out, resume=True, progress=False)
    assert os.path.getmtime(trained) == stamp
    assert [r["miou"] for r in again] == [r["miou"] for r in rows]


@pytest.mark.parametrize("changes, message", [
    ({"decoders": ["segformer"]}, "decoder 'segformer' is not one of upernet, upernet_lite"),
    ({"amounts": [1.5]}, r"prune: --amount 1.5 is outside \(0, 1\)"),
    ({"seeds": []}, "seeds and input_sizes must not be empty"),
])
def test_bad_config_is_refused_naming_the_key(tmp_path, changes, message):
    with pytest.raises(pareto.ParetoError, match=message):
        pareto.load_pareto_config(_config(tmp_path, **changes))


def test_unknown_key_is_refused(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("decoderz: [upernet]\n")
    with pytest.raises(pareto.ParetoError, match="bad.yaml: unknown key 'decoderz'"):
        pareto.load_pareto_config(str(path))


def test_pareto_front_keeps_only_undominated_points():
    rows = [{"latency_ms": 10, "miou": 0.5}, {"latency_ms": 5, "miou": 0.4},
            {"latency_ms": 12, "miou": 0.45}, {"latency_ms": 5, "miou": 0.4}]
    assert pareto.pareto_front(rows) == [True, True, False, True]


def test_the_published_pareto_flags_follow_from_the_published_points():
    # The Pareto report's table: (latency, mIoU mean of seeds) and the Pareto column.
    report = Path(__file__).resolve().parent.parent / "docs" / "reports" / "2026-12-01-pareto-decoders.md"
    lines = report.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| decoder | pruned |"))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    miou_col = next(i for i, c in enumerate(header) if c.startswith("mIoU (mean"))
    latency_col = next(i for i, c in enumerate(header) if "latency" in c)
    points, flags = [], []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        points.append((float(cells[latency_col]), float(cells[miou_col])))
        flags.append(cells[-1] == "yes")
    assert len(points) >= 6 and any(flags) and not all(flags)
    decimals = lambda column: 10.0 ** -len(re.sub(r"^[^.]*\.?", "", column))  # noqa: E731
    slack = (0.5 * decimals(lines[start + 2].strip("|").split("|")[latency_col].strip()),
             0.5 * decimals(lines[start + 2].strip("|").split("|")[miou_col].strip()))
    expected = front(points, slack)
    assert sum(e is not None for e in expected) >= len(points) // 2  # most rows are decided
    wrong = [(p, f) for p, f, e in zip(points, flags, expected) if e is not None and e != f]
    assert not wrong, "Pareto flags that the points contradict: %s" % wrong
