"""Atomic file writes: a temporary file beside the target, then a rename, so that a reader
(or a run killed mid-write) never sees half a file. The one writer for reports, configs,
tables and, through ``atomic_path``, for checkpoints and model files written by other
libraries (safetensors, torch.save, onnx). Also the one content digest of a file
(``file_sha256``), which model records and caches key on."""
import contextlib
import csv
import hashlib
import json
import os
import shutil
from typing import Any, Dict, Iterator, Mapping, Optional, Sequence, Union

__all__ = ["PathLike", "atomic_path", "write_text_atomic", "write_bytes_atomic", "write_json_atomic",
           "write_csv_atomic", "write_yaml_atomic", "copy_file_atomic", "file_sha256", "TEMP_MARKER"]

PathLike = Union[str, "os.PathLike[str]"]
TEMP_MARKER = ".tmp."  # in every temporary name: "<target>.tmp.<pid><suffix>"


@contextlib.contextmanager
def atomic_path(path: PathLike, suffix: str = "") -> Iterator[str]:
    """Yield a temporary path beside ``path`` (parent folder created); when the block ends
    without an exception the file written there is flushed to disk and renamed over ``path``,
    otherwise it is removed. ``suffix`` ends the temporary name, for writers that choose the
    format by extension (e.g. ".onnx")."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = "%s%s%d%s" % (path, TEMP_MARKER, os.getpid(), suffix)
    try:
        yield tmp
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text_atomic(path: PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (e.g. a serialised TensorRT engine)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(data)


def write_json_atomic(path: PathLike, data: Any, indent: int = 2) -> None:
    """JSON with ``indent`` and a final newline; values json cannot encode become str."""
    write_text_atomic(path, json.dumps(data, indent=indent, default=str) + "\n")


def write_csv_atomic(path: PathLike, rows: Sequence[Mapping[str, Any]],
                     columns: Sequence[str], float_format: Optional[str] = None) -> None:
    """A CSV with a header of ``columns``; keys of a row not in ``columns`` are left out.
    Floats are written with ``float_format`` (e.g. "%.6g") when given."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
            writer.writeheader()
            for row in rows:
                out: Dict[str, Any] = dict(row)
                if float_format:
                    out = {k: (float_format % v if isinstance(v, float) else v)
                           for k, v in out.items()}
                writer.writerow(out)


def write_yaml_atomic(path: PathLike, data: Mapping[str, Any], header: str = "") -> None:
    """YAML (keys in the given order) after ``header``, a comment block, when given."""
    import yaml
    text = yaml.safe_dump(dict(data), sort_keys=False, default_flow_style=None)
    write_text_atomic(path, header + text)


def copy_file_atomic(src: PathLike, dst: PathLike) -> None:
    """Copy ``src`` over ``dst`` atomically."""
    with atomic_path(dst) as tmp:
        shutil.copyfile(os.fspath(src), tmp)


def file_sha256(path: PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks (OSError if it cannot be read)."""
    digest = hashlib.sha256()
    with open(os.fspath(path), "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
