"""Encoder weights for training: ``encoder_weights: imagenet`` from timm's Hugging Face hub, or
a local weights file.

``imagenet`` names the ImageNet weights timm publishes for the registered encoder (its
``pretrained_cfg.hf_hub_id``, e.g. ``timm/mobilevit_s.cvnets_in1k``). They are fetched the way
huggingface_hub fetches any file, so the usual environment applies, read when the run starts:

  HF_HOME / HF_HUB_CACHE   where the cache lives (default ~/.cache/huggingface/hub)
  HF_HUB_OFFLINE=1         use the cache only; a model not in it stops the run with one line
                           naming the model id and the cache folder

A file already in the cache is used without network access. Any other value is a local file
path (.safetensors, or .pth/.pt read with weights_only=True), loaded as before. The source
(repo id, revision and file, or the local path) is recorded in the checkpoint's training
metadata so a run says where its encoder started from.
"""
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, Optional

from lpcv_segmentation.core.fileio import file_sha256

__all__ = ["IMAGENET", "WeightsError", "EncoderWeights", "hub_cache_dir", "hub_model_id",
           "resolve_encoder_weights"]

IMAGENET = "imagenet"
HUB_FILE = "model.safetensors"  # timm's hub repos hold their weights in this file


class WeightsError(RuntimeError):
    """Encoder weights that cannot be had (unknown arch, offline without a cache, no file)."""


@dataclass(frozen=True)
class EncoderWeights:
    """A local weights file and where it came from (``source``: "hub" or "file")."""
    path: str
    source: str
    model_id: Optional[str] = None  # hub: the repo id
    revision: Optional[str] = None  # hub: the snapshot (commit) the file belongs to
    sha256: Optional[str] = None

    def record(self) -> Dict[str, Any]:
        """What the checkpoint's training metadata keeps."""
        return {k: v for k, v in asdict(self).items() if v is not None}


def hub_cache_dir() -> str:
    """The hub cache folder huggingface_hub uses under the current environment."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.path.expanduser(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
        "huggingface")
    return os.path.join(os.path.expanduser(home), "hub")


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def hub_model_id(arch: str) -> str:
    """timm's hub repo id of the ImageNet weights of a registered arch."""
    import timm

    from lpcv_segmentation.model.segmodel import ARCHS
    if arch not in ARCHS:
        raise WeightsError("unknown architecture %r; known: %s" % (arch, ", ".join(sorted(ARCHS))))
    cfg = timm.models.get_pretrained_cfg(ARCHS[arch].timm_name)
    model_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not model_id:
        raise WeightsError("timm publishes no hub weights for %s (%s)"
                           % (arch, ARCHS[arch].timm_name))
    return model_id


def _from_hub(arch: str) -> EncoderWeights:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    model_id = hub_model_id(arch)
    cache = hub_cache_dir()
    offline = _offline()
    try:
        path = hf_hub_download(model_id, HUB_FILE, cache_dir=cache, local_files_only=offline)
    except LocalEntryNotFoundError:
        why = ("HF_HUB_OFFLINE is set" if offline else "the hub cannot be reached")
        raise WeightsError("encoder_weights=imagenet: %s is not in the hub cache %s and %s; "
                           "download it once online (or copy a cache there, HF_HOME=...)"
                           % (model_id, cache, why))
    except Exception as exc:  # HTTP errors, a repo that moved: one line, the model id named
        raise WeightsError("encoder_weights=imagenet: cannot fetch %s into %s: %s"
                           % (model_id, cache, str(exc).splitlines()[0] if str(exc) else
                              type(exc).__name__))
    # a cached file sits in .../snapshots/<revision>/model.safetensors
    revision = Path(path).parent.name
    return EncoderWeights(path=path, source="hub", model_id=model_id, revision=revision,
                          sha256=file_sha256(path))


def resolve_encoder_weights(arch: str, value: Optional[str]) -> Optional[EncoderWeights]:
    """The local file ``encoder_weights`` stands for: None for none, the hub's ImageNet
    weights for ``imagenet``, else the file at that path (which must exist)."""
    if not value:
        return None
    if str(value).lower() == IMAGENET:
        return _from_hub(arch)
    path = os.path.abspath(os.path.expanduser(str(value)))
    if not os.path.isfile(path):
        raise WeightsError("encoder_weights %s does not exist (give a weights file, or "
                           "'imagenet' for timm's hub weights)" % value)
    return EncoderWeights(path=path, source="file", sha256=file_sha256(path))
