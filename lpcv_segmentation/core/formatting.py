"""The one small number formatter of the reports and summaries (bag_eval, training, bench)."""
from typing import Any

__all__ = ["fmt"]


def fmt(value: Any, pattern: str = "%.4f", missing: str = "n/a") -> str:
    """``pattern % value``, or ``missing`` when there is no value (None)."""
    return missing if value is None else pattern % value
