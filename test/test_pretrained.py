"""training.pretrained: ``encoder_weights: imagenet`` reads timm's hub weights from the
Hugging Face cache (built here in a temporary folder, no network), a local file works as
before, offline without a cache stops with one line, and the checkpoint records the source."""
import pytest
import timm
import torch
from safetensors.torch import save_file

from lpcv_segmentation.model.checkpoint import read_metadata
from lpcv_segmentation.model.segmodel import ARCHS
from training.__main__ import main as cli
from training.pretrained import (WeightsError, hub_cache_dir, hub_model_id,
                                 resolve_encoder_weights)
from training.train import create_model

REVISION = "0123456789abcdef0123456789abcdef01234567"
TINY = ["arch=mobilevit_xxs", "decoder_channels=16", "input_size=64", "crop_size=64",
        "batch_size=4", "workers=0", "warmup_iters=0"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_hub_cache(hf_home, arch="mobilevit_xxs", seed=1):
    """The layout huggingface_hub writes: models--ORG--NAME/{refs/main, snapshots/REV/FILE},
    holding the weights of a freshly built (full, not features_only) timm model."""
    model_id = hub_model_id(arch)
    torch.manual_seed(seed)
    weights = timm.create_model(ARCHS[arch].timm_name, pretrained=False).state_dict()
    repo = hf_home / "hub" / ("models--" + model_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(REVISION)
    snapshot = repo / "snapshots" / REVISION
    snapshot.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in weights.items()}, str(snapshot / "model.safetensors"))
    return model_id, weights


@pytest.fixture
def offline_home(tmp_path, monkeypatch):
    home = tmp_path / "hf"
    for key in ("HF_HUB_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home


def config_for(weights, arch="mobilevit_xxs", input_size=64):
    return {"init": None, "arch": arch, "decoder_channels": 16, "input_size": input_size,
            "encoder_weights": weights, "decoder": "upernet"}


def test_imagenet_loads_the_hub_caches_weights(offline_home):
    model_id, weights = make_hub_cache(offline_home)
    assert model_id == "timm/mobilevit_xxs.cvnets_in1k"
    resolved = resolve_encoder_weights("mobilevit_xxs", "imagenet")
    assert resolved.source == "hub" and resolved.revision == REVISION
    assert resolved.path.startswith(str(offline_home / "hub"))
    model = create_model(config_for("imagenet"))
    encoder = model.encoder.state_dict()
    # features_only renames stages.0 -> stages_0; every encoder tensor comes from the cache
    compared = 0
    for key, tensor in encoder.items():
        source = weights[key.replace("stages_", "stages.")]
        assert torch.equal(tensor, source), key
        compared += 1
    assert compared == len(encoder) > 50
    random_init = create_model(config_for(None)).encoder.state_dict()
    assert not all(torch.equal(random_init[k], encoder[k]) for k in encoder)


def test_teacher_and_baseline_resolve_through_the_hub_too(offline_home):
    assert hub_model_id("swinv2_tiny").startswith("timm/swinv2_tiny_window8_256")
    assert hub_model_id("resnet18").startswith("timm/resnet18")
    _, weights = make_hub_cache(offline_home, "resnet18")
    model = create_model(config_for("imagenet", "resnet18"))
    assert torch.equal(model.encoder.state_dict()["conv1.weight"], weights["conv1.weight"])


def test_offline_without_a_cache_stops_with_one_line(offline_home, synth_dataset, tmp_path,
                                                     capsys):
    rc = cli(["train", "--config", "training/configs/student.yaml", "--data", str(synth_dataset),
              "--out", str(tmp_path / "run"), "iters=1", "encoder_weights=imagenet"] + TINY)
    err = capsys.readouterr().err
    assert rc == 1
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err
    assert "timm/mobilevit_xxs.cvnets_in1k" in lines[0]
    assert hub_cache_dir() == str(offline_home / "hub") and hub_cache_dir() in lines[0]
    assert not (tmp_path / "run" / "last.safetensors").exists()


def test_checkpoint_records_where_the_weights_came_from(offline_home, synth_dataset, tmp_path):
    make_hub_cache(offline_home)
    run = tmp_path / "run"
    assert cli(["train", "--config", "training/configs/student.yaml", "--data",
                str(synth_dataset), "--out", str(run), "iters=1", "eval_every=1",
                "max_eval_images=2", "encoder_weights=imagenet"] + TINY) == 0
    record = read_metadata(str(run / "last.safetensors"))["training"]["encoder_weights"]
    assert record["source"] == "hub" and record["revision"] == REVISION
    assert record["model_id"] == "timm/mobilevit_xxs.cvnets_in1k" and len(record["sha256"]) == 64


def test_a_local_file_works_as_before_and_a_missing_one_is_named(tmp_path):
    torch.manual_seed(2)
    weights = timm.create_model("mobilevit_xxs", pretrained=False).state_dict()
    path = tmp_path / "xxs.safetensors"
    save_file({k: v.contiguous() for k, v in weights.items()}, str(path))
    model = create_model(config_for(str(path)))
    assert torch.equal(model.encoder.state_dict()["stem.conv.weight"], weights["stem.conv.weight"])
    assert resolve_encoder_weights("mobilevit_xxs", str(path)).record()["source"] == "file"
    with pytest.raises(WeightsError, match="absent.safetensors does not exist"):
        resolve_encoder_weights("mobilevit_xxs", str(tmp_path / "absent.safetensors"))
