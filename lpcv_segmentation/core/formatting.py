"""The one small number formatter and the one Markdown table writer of the reports and summaries
(bag_eval, training, the lab, bench)."""
from typing import Any, Sequence

__all__ = ["fmt", "markdown_row", "markdown_header", "markdown_table"]


def fmt(value: Any, pattern: str = "%.4f", missing: str = "n/a") -> str:
    """``pattern % value``, or ``missing`` when there is no value (None)."""
    return missing if value is None else pattern % value


def markdown_row(cells: Sequence[Any]) -> str:
    """One row of a Markdown table: ``| a | b |`` (cells already formatted, or ``str``-ed)."""
    return "| " + " | ".join(str(cell) for cell in cells) + " |"


def markdown_header(headers: Sequence[str]) -> str:
    """The header row and the rule under it (for tables printed a row at a time)."""
    return markdown_row(headers) + "\n|" + "---|" * len(headers)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A whole Markdown table, without a trailing newline."""
    return "\n".join([markdown_header(headers)] + [markdown_row(row) for row in rows])
