"""Model zoo: named segmentation models fetched into a per-user cache, named ``zoo:NAME``.

    python -m lpcv_segmentation.zoo list | fetch NAME | path NAME | install NAME --from FILE

``resolve_model_path("zoo:NAME")`` is the one way every model path (the node's ``model_path``,
bag_eval's ``--model``, ``training evaluate``, ``--teacher``, ``import-onnx``) turns a zoo name
into the cached file. Registry: ``registry.py``; names in the cache: ``cache.py``; download and wrap: ``store.py``.
"""
from lpcv_segmentation.zoo.registry import MODELS, ZOO_PREFIX, ZooModel
from lpcv_segmentation.zoo.cache import (ZooError, cache_dir, cached_path, find_model, is_zoo_spec,
                                         resolve_model_path)
from lpcv_segmentation.zoo.store import fetch, install, listing

__all__ = ["MODELS", "ZOO_PREFIX", "ZooModel", "ZooError", "cache_dir", "cached_path", "fetch",
           "find_model", "install", "is_zoo_spec", "listing", "resolve_model_path"]
