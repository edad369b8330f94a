"""What every bench of this directory hands back: a Markdown section and a JSON record.

A bench prints its section (tables, then one line per target: met or MISSED with the measured
figure) to stdout and, with ``--json PATH``, writes {"title", "command", "targets", ...} so
that bench/run_all.py can list every target in one table at the top of docs/reports/benchmarks.md.
"""
import os
import shlex
import sys
from typing import Dict, List, NamedTuple, Optional, Sequence

from lpcv_segmentation.core import formatting
from lpcv_segmentation.core.formatting import markdown_table  # noqa: F401  (the benches' table writer)
from lpcv_segmentation.core.fileio import write_json_atomic


class Target(NamedTuple):
    item: str  # what is measured, e.g. "node overhead (drone.yaml outputs)"
    goal: str  # the target in words, e.g. "<= 1.10x"
    measured: str  # the figure, e.g. "1.34x"
    met: Optional[bool]  # None: could not be measured (the figure says why)

    def line(self) -> str:
        verdict = {True: "met", False: "**MISSED**", None: "not measured"}[self.met]
        return "- %s: target %s, measured %s: %s" % (self.item, self.goal, self.measured, verdict)


def fmt(value: Optional[float], pattern: str = "%.1f", missing: str = "-") -> str:
    """``lpcv_segmentation.core.formatting.fmt`` with the benches' defaults."""
    return formatting.fmt(value, pattern, missing)


def ratio(numerator: Optional[float], denominator: Optional[float]) -> Optional[float]:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def command_line(argv: Optional[List[str]] = None) -> str:
    """How this bench was run, as a copyable command from the repository root."""
    argv = sys.argv if argv is None else argv
    script = os.path.relpath(os.path.abspath(argv[0]))
    return " ".join([".venv/bin/python", shlex.quote(script)] + [shlex.quote(a) for a in argv[1:]])


def finish(title: str, body: str, targets: Sequence[Target], json_path: Optional[str],
           extra: Optional[Dict[str, object]] = None) -> int:
    """Print the section; write the JSON record when asked. Exit status 0: the bench ran
    (a missed target is a result, not a failure)."""
    lines = [body.rstrip(), ""]
    if targets:
        lines += [t.line() for t in targets] + [""]
    print("\n".join(lines), flush=True)
    if json_path:
        record = {"title": title, "command": command_line(), "body": body,
                  "targets": [t._asdict() for t in targets]}
        record.update(extra or {})
        write_json_atomic(json_path, record, indent=1)
    return 0
