"""What a model file must tell the runtime, checked in one place for every back end and for the
TensorRT engine builder: the metadata (input size, classes, normalisation, the logits' stride)
and the error that names a file the runtime cannot use. onnxruntime is imported only when an
ONNX file is read."""
import json
from typing import Any, Dict, Sequence

from lpcv_segmentation.core.classes import check_class_table
from lpcv_segmentation.core.metadata import METADATA_KEY

__all__ = ["RuntimeConfigError", "check_metadata", "output_stride", "check_output_shape",
           "session_metadata", "read_onnx_metadata"]


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
    stride = meta.get("output_stride", 1)
    if (not isinstance(stride, int) or isinstance(stride, bool) or stride < 1
            or int(meta["input_size"]) % stride):
        raise RuntimeConfigError("%s: metadata output_stride must be a positive whole number that "
                                 "divides input_size %s, got %r"
                                 % (source, meta["input_size"], stride))
    return meta


def output_stride(meta: Dict[str, Any]) -> int:
    """The stride of a model's logits: 1 (logits at the input size) unless its metadata records
    ``output_stride`` (logits at input_size / output_stride, upsampled by the runtime)."""
    return int(meta.get("output_stride", 1))


def check_output_shape(source: str, output: str, shape: Sequence[Any], meta: Dict[str, Any]
                       ) -> None:
    """Raise RuntimeConfigError naming ``source`` unless ``shape`` is (1, C, h, w) logits at the
    size the metadata promises: input_size / output_stride. A dimension may be symbolic (a str
    or None, or -1 for TensorRT): it is accepted; a number must match."""
    size, num_classes, stride = int(meta["input_size"]), int(meta["num_classes"]), output_stride(meta)
    shape = list(shape)
    if len(shape) != 4 or (isinstance(shape[1], int) and shape[1] not in (-1, num_classes)):
        raise RuntimeConfigError("%s: output %r has shape %s; expected (1, %d, H, W) logits"
                                 % (source, output, shape, num_classes))
    side = size // stride
    if any(isinstance(d, int) and d not in (-1, side) for d in shape[2:]):
        if stride == 1:
            raise RuntimeConfigError(
                "%s: output %r has shape %s, but its metadata records no output_stride, so the "
                "logits should be at the input size %dx%d. Export it with --output-stride native "
                "(python -m training export), or for a foreign model: python -m training "
                "import-onnx --onnx FILE --output-stride N ..."
                % (source, output, shape, size, size))
        raise RuntimeConfigError("%s: output %r has shape %s, but its metadata says output_stride "
                                 "%d at input_size %d, so the logits should be %dx%d"
                                 % (source, output, shape, stride, size, side, side))


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
