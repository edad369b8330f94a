"""The lab's generated reports: a dated header (when, on what machine, by which command, from
which models) over the command's tables, so that the docs link a report instead of copying
figures by hand.

Each measuring lab command records ``stamp()`` in its JSON report and writes its Markdown
report (``header`` + tables by ``lpcv_segmentation.core.formatting.markdown_table``) into
its output folder.
"""
import os
import platform
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

__all__ = ["machine_description", "stamp", "header"]


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_description() -> Dict[str, Any]:
    """CPU model and cores, the OS, and the versions the figures depend on."""
    import onnxruntime
    import torch
    return {"cpu": _cpu_name(), "cores": os.cpu_count(), "system": platform.platform(terse=True),
            "python": platform.python_version(), "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__}


def stamp() -> Dict[str, Any]:
    """{"date", "machine"} of a report made now (recorded in its JSON)."""
    return {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": machine_description()}


def header(title: str, command: str, models: Sequence[str],
           made: Optional[Dict[str, Any]] = None) -> str:
    """The report's title and its provenance lines (``models``: one "what `path`" each);
    ``made`` is the run's ``stamp()`` (None:
    a report from before the stamp was recorded, which says so)."""
    lines = ["# %s" % title, ""]
    if made:
        m = made["machine"]
        lines += ["- Date: %s" % made["date"],
                  "- Machine: %s, %s cores, %s; Python %s, torch %s, onnxruntime %s"
                  % (m.get("cpu"), m.get("cores"), m.get("system", "?"), m.get("python"),
                     m.get("torch"), m.get("onnxruntime"))]
    else:
        lines.append("- Date and machine: not recorded")
    lines.append("- Command: `%s`" % command)
    if models:
        lines.append("- Models: " + "; ".join(models))
    return "\n".join(lines + [""])
