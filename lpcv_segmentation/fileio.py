"""Atomic file writes: a temporary file beside the target, then a rename, so that a reader
(or a run killed mid-write) never sees half a report. Checkpoints use the same rule."""
import json
import os
from typing import Any, Union

PathLike = Union[str, "os.PathLike[str]"]


def write_text_atomic(path: PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically, creating the parent folder."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: PathLike, data: Any) -> None:
    """JSON with 2-space indentation and a final newline; values json cannot encode become str."""
    write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def write_bytes_atomic(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, creating the parent folder."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = "%s.tmp.%d" % (path, os.getpid())
    with open(tmp, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)
