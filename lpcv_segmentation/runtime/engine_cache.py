"""Where TensorRT engines built from an ONNX model live, and when one must be (re)built.

An engine is only valid for the model bytes, precision, TensorRT version and GPU it was built
for, so its file name carries a digest of all four:

    <cache>/tensorrt/<model stem>-<precision>-<digest>.engine       the serialised engine
    <cache>/tensorrt/<model stem>-<precision>-<digest>.engine.json  model metadata + the key
    <cache>/ort-trt/<model stem>-<precision>-<digest>/              ONNX Runtime's TensorRT
                                                                    provider cache for the model

A changed model, precision, TensorRT (JetPack upgrade) or GPU gives another file name, so a
stale engine is never loaded; it is simply left behind. ``<cache>`` is ``engine_cache_dir``,
by default ``$XDG_CACHE_HOME/lpcv_segmentation`` (``~/.cache/lpcv_segmentation``): per user
and writable, never the package's ``share/`` folder, which is often read-only.

Pure Python (no tensorrt, CUDA, numpy or torch): the node asks ``engine_build_needed`` before
loading so it can say "building TensorRT engine" in /diagnostics. Runs on Python 3.8+.
"""
import hashlib
import json
import os
import tempfile
from typing import Any, Dict, NamedTuple, Optional, Sequence

from lpcv_segmentation.core.fileio import file_sha256

__all__ = ["ENGINE_METADATA_SUFFIX", "EngineError", "EngineKey", "default_cache_dir",
           "resolve_cache_dir", "model_sha256", "engine_path", "ort_trt_cache_path",
           "check_writable", "engine_build_needed", "uses_tensorrt", "import_tensorrt",
           "tensorrt_version", "gpu_identity", "engine_key"]

ENGINE_METADATA_SUFFIX = ".json"  # an engine's metadata lives beside it: MODEL.engine.json
ENGINE_SUFFIXES = (".engine", ".plan")  # a file with these endings is an engine already
DIGEST_CHARS = 16  # 64 bits of SHA-256: no accidental collision among a user's engines


class EngineError(ValueError):
    """An engine that cannot be keyed, built or cached (TensorRT missing, a cache folder that is
    not writable, unreadable metadata); the message names the file or folder and says why."""


class EngineKey(NamedTuple):
    """Everything an engine depends on. ``gpu`` is e.g. "Orin (sm_87)", "" when unknown."""
    model_sha256: str
    precision: str
    tensorrt_version: str
    gpu: str = ""

    @property
    def digest(self) -> str:
        text = json.dumps(self._asdict(), sort_keys=True)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:DIGEST_CHARS]

    def as_dict(self) -> Dict[str, str]:
        return dict(self._asdict())


def default_cache_dir(environ: Optional[Dict[str, str]] = None) -> str:
    """``$XDG_CACHE_HOME/lpcv_segmentation``, else ``~/.cache/lpcv_segmentation``."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "lpcv_segmentation")


def resolve_cache_dir(engine_cache_dir: Optional[str] = None) -> str:
    """The cache folder to use: ``engine_cache_dir`` (``~`` expanded) or the default; "" and
    None both mean the default, so a ROS parameter can leave it empty."""
    if engine_cache_dir:
        return os.path.abspath(os.path.expanduser(os.fspath(engine_cache_dir)))
    return default_cache_dir()


def model_sha256(path: str) -> str:
    """Hex SHA-256 of a model file's bytes (``fileio.file_sha256``), as an EngineError naming
    the file when it cannot be read."""
    try:
        return file_sha256(path)
    except OSError as error:
        raise EngineError("cannot read model file %s to key its engine: %s"
                          % (path, error.strerror or error))


def _stem(model_path: str) -> str:
    return os.path.splitext(os.path.basename(model_path))[0] or "model"


def engine_path(cache_dir: str, model_path: str, key: EngineKey) -> str:
    """The engine file for ``key`` (it may not exist yet); metadata goes to PATH + ".json"."""
    name = "%s-%s-%s.engine" % (_stem(model_path), key.precision, key.digest)
    return os.path.join(resolve_cache_dir(cache_dir), "tensorrt", name)


def ort_trt_cache_path(cache_dir: str, model_path: str, key: EngineKey) -> str:
    """The folder ONNX Runtime's TensorRT provider keeps this model's engines in."""
    name = "%s-%s-%s" % (_stem(model_path), key.precision, key.digest)
    return os.path.join(resolve_cache_dir(cache_dir), "ort-trt", name)


def check_writable(folder: str) -> str:
    """Create ``folder`` if missing and check that files can be written there; returns it.

    Raises EngineError naming the folder (read-only mount, no permission, a file in the
    way) with the way out: another ``engine_cache_dir`` or an engine built beforehand.
    """
    hint = ("pass engine_cache_dir a writable folder, or build the engine beforehand where it "
            "is writable (python -m lpcv_segmentation.runtime.build_engine --model MODEL.onnx --build-only "
            "--cache-dir DIR)")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as error:
        raise EngineError("engine cache folder %s cannot be created (%s); %s"
                          % (folder, error.strerror or error, hint))
    try:  # a real file, not os.access: root passes access checks on a read-only mount
        handle, probe = tempfile.mkstemp(prefix=".write_test.", dir=folder)
        os.close(handle)
        os.remove(probe)
    except OSError as error:
        raise EngineError("engine cache folder %s is not writable (%s); %s"
                          % (folder, error.strerror or error, hint))
    return folder


def uses_tensorrt(model_path: str, backend: str, device: str,
                  ort_providers: Optional[Sequence[str]] = None) -> bool:
    """Whether loading this model builds or loads a TensorRT engine from an ONNX file: back end
    "tensorrt" on an ``.onnx`` file, or "onnxruntime" on a GPU device with ONNX Runtime's
    TensorRT provider installed (``ort_providers``: the available providers; asked of
    onnxruntime when None). An ``.engine`` file is used as it is and needs no build."""
    suffix = os.path.splitext(model_path)[1].lower()
    if suffix in ENGINE_SUFFIXES:
        return False
    if backend == "auto":
        backend = "onnxruntime" if suffix == ".onnx" else ""
    if backend == "tensorrt":
        return suffix == ".onnx"
    if backend != "onnxruntime" or device == "cpu":
        return False
    if ort_providers is None:
        try:
            import onnxruntime
        except ImportError:
            return False
        ort_providers = onnxruntime.get_available_providers()
    return "TensorrtExecutionProvider" in ort_providers


def engine_build_needed(model_path: str, backend: str = "auto", device: str = "cpu",
                        precision: str = "fp32", engine_cache_dir: Optional[str] = None,
                        available_providers: Optional[Sequence[str]] = None) -> bool:
    """True when loading this model will first build a TensorRT engine (minutes on a Jetson):
    the model goes through TensorRT (``uses_tensorrt``) and the cache holds no engine for its
    bytes, precision, TensorRT version and GPU. False for everything else, and also when
    TensorRT is not installed (loading then fails with a message saying so). Never raises
    for a missing model file: loading reports that. ``available_providers``: ONNX Runtime's
    providers (asked of onnxruntime when None)."""
    if (not os.path.isfile(model_path)
            or not uses_tensorrt(model_path, backend, device, available_providers)):
        return False
    try:
        key = engine_key(model_path, precision, for_onnxruntime=backend != "tensorrt")
    except EngineError:
        return False
    if backend == "tensorrt":
        return not os.path.isfile(engine_path(engine_cache_dir or "", model_path, key))
    folder = ort_trt_cache_path(engine_cache_dir or "", model_path, key)
    return not (os.path.isdir(folder) and any(name.endswith(".engine")
                                              for name in os.listdir(folder)))


def read_engine_metadata(path: str) -> Dict[str, Any]:
    """The JSON beside an engine (``PATH.json``); EngineError naming it when unreadable."""
    meta_path = path + ENGINE_METADATA_SUFFIX
    try:
        with open(meta_path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError) as error:
        raise EngineError("%s: cannot read the engine's metadata file %s: %s"
                          % (path, meta_path, error))
    if not isinstance(data, dict):
        raise EngineError("%s: %s holds %s, expected a JSON object"
                          % (path, meta_path, type(data).__name__))
    return data


def import_tensorrt() -> Any:
    try:
        import tensorrt
    except ImportError as error:
        raise EngineError("building a TensorRT engine needs the tensorrt Python package, which "
                          "is not installed (%s); it comes with JetPack (apt install "
                          "python3-libnvinfer) or NVIDIA's TensorRT for desktop GPUs" % error)
    return tensorrt


def tensorrt_version() -> Optional[str]:
    """The installed TensorRT version, or None without the tensorrt package."""
    try:
        import tensorrt
    except ImportError:
        return None
    return str(tensorrt.__version__)


def gpu_identity(device_id: int = 0) -> str:
    """e.g. "Orin (sm_87)"; "" when cuda-python or the GPU is not there (then only the
    TensorRT version tells engines apart, which is enough on one Jetson)."""
    try:
        from cuda import cudart
        error, props = cudart.cudaGetDeviceProperties(device_id)
    except Exception:  # noqa: BLE001  no cuda-python, no driver, no device: all mean unknown
        return ""
    if int(error) != 0:
        return ""
    name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else props.name
    return "%s (sm_%d%d)" % (str(name).strip("\0 "), props.major, props.minor)


def engine_key(model_path: str, precision: str, for_onnxruntime: bool = False) -> EngineKey:
    """The cache key of ``model_path`` at ``precision`` on this machine.

    For ONNX Runtime's TensorRT provider without the tensorrt Python package, the onnxruntime
    version stands in for the TensorRT version (each onnxruntime-gpu build links one TensorRT).
    Raises EngineError when neither is known."""
    version = tensorrt_version()
    if version is None and for_onnxruntime:
        try:
            import onnxruntime
            version = "onnxruntime-%s" % onnxruntime.__version__
        except ImportError:
            version = None
    if version is None:
        import_tensorrt()  # raises the one-line "needs the tensorrt Python package"
    return EngineKey(model_sha256(model_path), precision, str(version), gpu_identity())
