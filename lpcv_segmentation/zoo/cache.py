"""Finding zoo models by name in the per-user cache: ``resolve_model_path("zoo:NAME")``.

Cache: ``$XDG_CACHE_HOME/lpcv_segmentation/models``, else ``~/.cache/lpcv_segmentation/models``.
Standard library only, so the runtime resolves names without the download and wrap code of
``store.py`` (which itself runs the wrapped copy through the runtime to check it).
"""
import os
from typing import Any

from lpcv_segmentation.zoo.registry import MODELS, ZOO_PREFIX, ZooModel

__all__ = ["ZooError", "cache_dir", "cached_path", "find_model", "install_hint", "is_zoo_spec",
           "resolve_model_path"]


class ZooError(ValueError):
    """A zoo name, download or file that cannot be used; one line naming the model and the fix."""


def cache_dir() -> str:
    """``$XDG_CACHE_HOME/lpcv_segmentation/models``, else ``~/.cache/lpcv_segmentation/models``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "lpcv_segmentation", "models")


def find_model(name: str) -> ZooModel:
    """The registry entry ``name`` (with or without ``zoo:``); ZooError lists the known names."""
    bare = name[len(ZOO_PREFIX):] if name.startswith(ZOO_PREFIX) else name
    if bare not in MODELS:
        raise ZooError("%r is not a zoo model; known: %s (python -m lpcv_segmentation.zoo list)"
                       % (bare, ", ".join(sorted(MODELS))))
    return MODELS[bare]


def cached_path(model: ZooModel) -> str:
    """Where ``model``'s wrapped copy lives in the cache (whether or not it is there)."""
    return os.path.join(cache_dir(), "%s-%s.onnx" % (model.name, model.sha256[:12]))


def install_hint(model: ZooModel) -> str:
    return ("python -m lpcv_segmentation.zoo fetch %s, or on a machine without network copy %s "
            "here and run: python -m lpcv_segmentation.zoo install %s --from FILE"
            % (model.name, model.url, model.name))


def is_zoo_spec(spec: Any) -> bool:
    return isinstance(spec, str) and spec.startswith(ZOO_PREFIX)


def resolve_model_path(spec: Any) -> Any:
    """The one way a model is named: ``zoo:NAME`` becomes the cached file's path; anything else
    is returned as given. ZooError when the name is unknown or the model is not in the cache
    (the message says how to fetch or install it)."""
    if not is_zoo_spec(spec):
        return spec
    model = find_model(spec)
    path = cached_path(model)
    if not os.path.isfile(path):
        raise ZooError("%s is not in the cache (%s): %s" % (spec, cache_dir(), install_hint(model)))
    return path
