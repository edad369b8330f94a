"""The per-user cache of zoo models: download, verify and wrap them (names: ``cache.py``).

Cache: ``$XDG_CACHE_HOME/lpcv_segmentation/models``, else ``~/.cache/lpcv_segmentation/models``.
A cached model is the registry's file wrapped with this project's metadata by
``lpcv_segmentation.runtime.onnx_import.import_onnx`` (I/O names, upsampled logits, class table,
normalisation), so every consumer runs it as it runs an exported model. Its name carries the
first 12 hex digits of the source file's SHA-256: a registry entry that changes its file never
finds a stale copy.

A download is streamed to a temporary file in the cache folder (named with
``core.fileio.TEMP_MARKER``, removed whatever happens), hashed as it arrives and compared with the
registry before anything else reads it; the wrapped copy then reaches its final name by the
atomic rename of ``core.fileio.atomic_path``. So a half-downloaded file or a file with another
hash never becomes a model, and a refused file leaves nothing in the cache.

Runs on Python 3.8+. Listing and resolving names need the standard library only; fetching and
installing also need ONNX Runtime and the ``onnx`` package (the wrap edits the graph).
"""
import hashlib
import os
import shutil
import tempfile
from typing import Any, Callable, Dict, List, Optional

from lpcv_segmentation.core.fileio import TEMP_MARKER, file_sha256
from lpcv_segmentation.zoo.cache import ZooError, cache_dir, cached_path, find_model
from lpcv_segmentation.zoo.registry import MODELS, ZooModel

__all__ = ["fetch", "install", "listing", "DOWNLOAD_TIMEOUT_S"]

DOWNLOAD_TIMEOUT_S = 30.0
BLOCK = 1 << 20


# --------------------------------------------------------------------------------------------
# Download, verify, wrap
# --------------------------------------------------------------------------------------------
def _temp_file(model: ZooModel) -> str:
    """An empty temporary file in the cache folder, named as the atomic writer names its own."""
    folder = cache_dir()
    os.makedirs(folder, exist_ok=True)
    handle, path = tempfile.mkstemp(prefix="%s%s" % (model.name, TEMP_MARKER), suffix=".download",
                                    dir=folder)
    os.close(handle)
    return path


def _download(model: ZooModel, url: str, target: str,
              progress: Optional[Callable[[int, Optional[int]], None]]) -> str:
    """Stream ``url`` into ``target``; its hex SHA-256. ZooError (one line) when it fails."""
    import urllib.error  # here: resolving a name (every Segmenter) needs no network modules
    import urllib.request
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, \
                open(target, "wb") as out:
            total = response.headers.get("Content-Length") if response.headers else None
            total = int(total) if total and str(total).isdigit() else None
            done = 0
            for block in iter(lambda: response.read(BLOCK), b""):
                out.write(block)
                digest.update(block)
                done += len(block)
                if progress is not None:
                    progress(done, total)
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", None) or error
        raise ZooError("%s: cannot download %s (%s); %s"
                       % (model.name, url, str(reason).strip().splitlines()[0] if str(reason)
                          else type(error).__name__,
                          "on a machine without network copy the file here and run: "
                          "python -m lpcv_segmentation.zoo install %s --from FILE" % model.name))
    return digest.hexdigest()


def _check_hash(model: ZooModel, digest: str, source: str) -> None:
    if digest != model.sha256:
        raise ZooError("%s: %s has SHA-256 %s, the registry says %s: refused (a corrupt, partial "
                       "or different file), nothing cached" % (model.name, source, digest,
                                                               model.sha256))


def _wrap(model: ZooModel, verified: str) -> str:
    """Wrap a verified copy into the cache (atomic); the cached path."""
    try:
        from lpcv_segmentation.runtime.onnx_import import ImportOnnxError, import_onnx
        import onnx  # noqa: F401  the wrap edits the graph with it
    except ImportError as error:
        raise ZooError("%s: wrapping the model needs the onnx package (%s): pip install onnx, "
                       "or copy %s from a machine that has it" % (model.name, error,
                                                                  cached_path(model)))
    target = cached_path(model)
    zoo_record = {k: v for k, v in model.card().items()
                  if k in ("name", "spec", "url", "sha256", "licence", "trained_on", "provenance",
                           "published")}
    try:
        import_onnx(verified, target, model.input_size, model.mean, model.std, model.classes,
                    model.norm_scale, model.output_stride, source_name=os.path.basename(model.url),
                    extra={"zoo": zoo_record})
    except ImportOnnxError as error:
        raise ZooError("%s: the verified file cannot be wrapped: %s" % (model.name, error))
    return target


def fetch(name: str, url: Optional[str] = None, force: bool = False,
          progress: Optional[Callable[[int, Optional[int]], None]] = None) -> Dict[str, Any]:
    """Download ``name`` (from ``url`` when given: a mirror, still checked against the
    registry's hash), verify and wrap it into the cache. Already cached: nothing is downloaded
    unless ``force``. Returns {"name", "path", "downloaded", "source"}."""
    model = find_model(name)
    target = cached_path(model)
    if os.path.isfile(target) and not force:
        return {"name": model.name, "path": target, "downloaded": False, "source": None}
    source = url or model.url
    temp = _temp_file(model)
    try:
        _check_hash(model, _download(model, source, temp, progress), source)
        _wrap(model, temp)
    finally:
        os.remove(temp)
    return {"name": model.name, "path": target, "downloaded": True, "source": source}


def install(name: str, source_file: str) -> Dict[str, Any]:
    """Put a copied file (e.g. carried to an air-gapped drone) into the cache: its hash is
    checked against the registry, then it is wrapped as ``fetch`` wraps a download."""
    model = find_model(name)
    source_file = os.fspath(source_file)
    if not os.path.isfile(source_file):
        raise ZooError("%s: no such file %s" % (model.name, source_file))
    temp = _temp_file(model)
    try:
        shutil.copyfile(source_file, temp)  # the bytes wrapped are the bytes whose hash is checked
        _check_hash(model, file_sha256(temp), source_file)
        _wrap(model, temp)
    finally:
        os.remove(temp)
    return {"name": model.name, "path": cached_path(model), "downloaded": False,
            "source": os.path.abspath(source_file)}


def listing() -> List[Dict[str, Any]]:
    """Every registry entry with its cache path and whether it is cached."""
    return [dict(m.card(), path=cached_path(m), cached=os.path.isfile(cached_path(m)))
            for m in MODELS.values()]
