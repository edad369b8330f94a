"""lpcv_segmentation.zoo: fetch from a file:// source, install a copied file, refuse what does not
hash right or cannot be reached (one line, exit 1, nothing cached), and zoo:NAME wherever a model
path is taken.

The download source is the copy of the LPCV 2023 network in ../shared/peers/ (no network is
used: the unreachable URL is a closed port on 127.0.0.1); the tests that need it skip without it.
"""
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lpcv_segmentation.runtime.segmenter import RuntimeConfigError, Segmenter
from lpcv_segmentation.zoo import (MODELS, ZooError, cache_dir, cached_path, fetch, install,
                                   resolve_model_path)

REPO = Path(__file__).resolve().parent.parent
PEER = REPO.parent / "shared" / "peers" / "lpcv2023_2nd_topformer_tiny_288.onnx"
NAME = "lpcv2023-topformer-tiny"
UNREACHABLE = "http://127.0.0.1:9/tiny_288_8tp_3trans_dist-682.onnx"  # discard port: refused

needs_peer = pytest.mark.skipif(not PEER.is_file(), reason="the LPCV network's copy %s is absent "
                                "(it lives beside the repository, in ../shared/peers/)" % PEER)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty per-test cache through XDG_CACHE_HOME."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return Path(cache_dir())


def zoo_cli(*args, env_cache):
    env = dict(os.environ, XDG_CACHE_HOME=str(env_cache), PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "lpcv_segmentation.zoo"] + list(args),
                          cwd=str(REPO), env=env, capture_output=True, text=True, timeout=120)


def leftovers(folder: Path):
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_registry_entries_are_complete():
    for model in MODELS.values():
        assert model.url.startswith("https://") and len(model.sha256) == 64
        assert model.licence and model.trained_on and model.provenance and model.published
        assert model.spec == "zoo:" + model.name
    lpcv = MODELS[NAME]
    assert "ff3d19c3b4e7d18b081f9d3e0b1fbb4c0dcce0f3" in lpcv.url and lpcv.licence == "Apache-2.0"
    assert (lpcv.input_size, lpcv.output_stride) == (288, 8)


@needs_peer
def test_the_shared_copy_is_the_registered_file():
    assert hashlib.sha256(PEER.read_bytes()).hexdigest() == MODELS[NAME].sha256


def test_cache_follows_xdg_and_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert cache_dir() == str(tmp_path / "x" / "lpcv_segmentation" / "models")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == str(tmp_path / "home" / ".cache" / "lpcv_segmentation" / "models")


def test_unreachable_source_is_one_line_exit_1_and_nothing_cached(tmp_path):
    result = zoo_cli("fetch", NAME, "--url", UNREACHABLE, env_cache=tmp_path / "xdg")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert NAME in lines[0] and UNREACHABLE in lines[0]
    assert "python -m lpcv_segmentation.zoo install %s --from FILE" % NAME in lines[0]
    assert leftovers(tmp_path / "xdg" / "lpcv_segmentation" / "models") == []


def test_a_name_not_cached_or_unknown_says_what_to_do(cache):
    with pytest.raises(ZooError, match="fetch %s.*install %s --from FILE" % (NAME, NAME)):
        resolve_model_path("zoo:" + NAME)
    with pytest.raises(ZooError, match="not a zoo model; known: %s" % NAME):
        resolve_model_path("zoo:nope")
    with pytest.raises(RuntimeConfigError, match="not in the cache"):
        Segmenter("zoo:" + NAME)
    assert resolve_model_path("models/default.onnx") == "models/default.onnx"


@needs_peer
def test_a_corrupt_copy_is_refused_and_leaves_nothing(cache, tmp_path):
    bad = tmp_path / "copy.onnx"
    data = bytearray(PEER.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(ZooError, match="SHA-256 .* refused"):
        install(NAME, str(bad))
    truncated = tmp_path / "half.onnx"  # a download cut short
    truncated.write_bytes(PEER.read_bytes()[:100000])
    with pytest.raises(ZooError, match="refused"):
        fetch(NAME, url=truncated.as_uri())
    assert leftovers(cache) == []


@needs_peer
def test_fetch_from_a_file_url_wraps_the_model_for_every_consumer(cache):
    report = fetch(NAME, url=PEER.as_uri())
    path = report["path"]
    assert report["downloaded"] and path == cached_path(MODELS[NAME]) and leftovers(cache) == [
        os.path.basename(path)]
    assert fetch(NAME)["downloaded"] is False  # cached: nothing downloaded
    segmenter = Segmenter("zoo:" + NAME)
    assert segmenter.model_path == path and segmenter.input_size == 288
    meta = segmenter.metadata
    assert meta["imported"]["sha256"] == MODELS[NAME].sha256
    assert meta["imported"]["output_stride"] == 8 and meta["zoo"]["licence"] == "Apache-2.0"
    assert meta["source"] == "tiny_288_8tp_3trans_dist-682.onnx"
    # the wrapped model labels an image as the published network does (bilinear upsampling)
    import onnxruntime as ort
    from lpcv_segmentation.runtime.onnx_import import upsample_logits
    rgb = np.random.default_rng(0).integers(0, 256, (200, 300, 3), dtype=np.uint8)
    x = segmenter.preprocess(rgb)
    session = ort.InferenceSession(str(PEER), providers=["CPUExecutionProvider"])
    reference = upsample_logits(session.run(None, {session.get_inputs()[0].name: x})[0], 288)
    np.testing.assert_allclose(segmenter.infer(x), reference, atol=1e-3)


@needs_peer
def test_install_from_then_consumers_take_the_zoo_name(cache, tmp_path, synth_dataset):
    result = zoo_cli("install", NAME, "--from", str(PEER), env_cache=cache.parent.parent)
    assert result.returncode == 0, result.stderr
    path = zoo_cli("path", NAME, env_cache=cache.parent.parent).stdout.strip()
    assert path == cached_path(MODELS[NAME]) and os.path.isfile(path)
    assert "[cached]" in zoo_cli("list", env_cache=cache.parent.parent).stdout

    from lpcv_segmentation.node.config import PARAMETERS, check_config
    values = {spec.name: spec.default for spec in PARAMETERS}
    values["model_path"] = "zoo:" + NAME
    assert check_config(values).model_path == path  # the node's model_path (and the launch file's)

    from lpcv_segmentation.replay.scoring import evaluate_offline, resolve_model
    from training.dataset_to_bag import write_flight_bag
    assert resolve_model("zoo:" + NAME) == path  # bag_eval --model
    bag = tmp_path / "flight"
    write_flight_bag(synth_dataset, "val", bag, limit=2, progress=False)
    replay = evaluate_offline(bag, "zoo:" + NAME, progress=False)
    assert replay["model"] == path and replay["frames"] == 2, replay

    from training.evaluate import Runtime, evaluate
    result = evaluate("zoo:" + NAME, str(synth_dataset), "val", Runtime(warmup=0), limit=2,
                      progress=False)
    assert result["model"] == path and result["input_size"] == 288 and result["images"] == 2

    from training.train import load_teacher
    teacher = load_teacher("zoo:" + NAME, __import__("torch").device("cpu"))  # --teacher
    assert teacher.input_size == 288
