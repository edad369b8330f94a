"""What a model file must tell the runtime, checked in one place for every back end and for the
TensorRT engine builder: the metadata (input size, classes, normalisation) and the error that
names a file the runtime cannot use. onnxruntime is imported only when an ONNX file is read."""
import json
from typing import Any, Dict

from lpcv_segmentation.core.classes import check_class_table
from lpcv_segmentation.core.metadata import METADATA_KEY

__all__ = ["RuntimeConfigError", "check_metadata", "session_metadata", "read_onnx_metadata"]


class RuntimeConfigError(ValueError):
    """A model file, back end or setting that the runtime cannot use; the message names it."""


def check_metadata(meta: Dict[str, Any], source: str) -> Dict[str, Any]:
    """Raise RuntimeConfigError naming ``source`` if the model metadata lacks what the runtime
    needs (input_size, num_classes, mean, std) or disagrees with the package's class table."""
    missing = [k for k in ("input_size", "num_classes", "mean", "std") if k not in meta]
    if missing:
        raise RuntimeConfigError("%s: model metadata lacks %s" % (source, ", ".join(missing)))
    for key in ("mean", "std"):
        values = meta[key]
        if not isinstance(values, (list, tuple)) or len(values) != 3:
            raise RuntimeConfigError("%s: metadata %r must hold 3 numbers (RGB), got %r"
                                     % (source, key, values))
    if any(float(s) <= 0 for s in meta["std"]):
        raise RuntimeConfigError("%s: metadata std must be positive, got %r" % (source, meta["std"]))
    if int(meta["input_size"]) < 1 or int(meta["num_classes"]) < 1:
        raise RuntimeConfigError("%s: metadata input_size and num_classes must be positive, got "
                                 "%r and %r" % (source, meta["input_size"], meta["num_classes"]))
    if meta.get("classes"):
        try:
            check_class_table(meta["classes"])
        except (ValueError, KeyError, TypeError) as error:
            raise RuntimeConfigError("%s: %s" % (source, error))
    return meta


def session_metadata(session: Any, model_path: str) -> Dict[str, Any]:
    """The checked ``lpcv_segmentation`` metadata of an open ONNX Runtime session."""
    props = session.get_modelmeta().custom_metadata_map
    if METADATA_KEY not in props:
        raise RuntimeConfigError("%s has no %r metadata (class table, input size, "
                                 "normalisation); export it with python -m training export"
                                 % (model_path, METADATA_KEY))
    try:
        meta = json.loads(props[METADATA_KEY])
    except ValueError as error:
        raise RuntimeConfigError("%s: %r metadata is not valid JSON: %s"
                                 % (model_path, METADATA_KEY, error))
    return check_metadata(meta, model_path)


def read_onnx_metadata(model_path: str) -> Dict[str, Any]:
    """The checked metadata of an ONNX file, read with ONNX Runtime on the CPU."""
    try:
        import onnxruntime as ort
    except ImportError as error:
        raise RuntimeConfigError("reading %s needs the onnxruntime package: %s" % (model_path, error))
    try:
        session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own Fail/InvalidGraph types
        raise RuntimeConfigError("%s: ONNX Runtime cannot load it: %s"
                                 % (model_path, str(error).strip().splitlines()[0]))
    return session_metadata(session, model_path)
