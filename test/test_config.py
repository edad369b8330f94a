"""training.config: YAML + key=value overrides, typed, unknown keys refused, saved config."""
from pathlib import Path

import pytest
import yaml

from training.config import (DEFAULTS, ConfigError, coerce, load_config, parse_overrides,
                             read_yaml, save_config)

CONFIG_DIR = Path(__file__).resolve().parents[1] / "training" / "configs"
REQUIRED_KEYS = ("arch", "decoder_channels", "input_size", "crop_size", "batch_size", "iters",
                 "lr", "eval_every", "seed", "workers")


@pytest.mark.parametrize("name, arch", [("teacher", "swinv2_tiny"), ("student", "mobilevit_s"),
                                        ("baseline", "resnet18")])
def test_shipped_configs_load_with_the_contract_keys(name, arch):
    config = load_config(str(CONFIG_DIR / ("%s.yaml" % name)))
    assert config["arch"] == arch
    for key in REQUIRED_KEYS:
        assert key in config and config[key] is not None
    # every key the file sets is a real key of the right type (read_yaml checks both)
    assert set(read_yaml(str(CONFIG_DIR / ("%s.yaml" % name)))) <= set(DEFAULTS)


def test_overrides_are_coerced_to_the_type_of_the_default():
    got = parse_overrides(["lr=1e-3", "iters=250", "amp=true", "fm_stages=[0, 2]",
                           "teacher=runs/t/best.safetensors", "arch=resnet18", "grad_clip=1.5",
                           "init=null", "scale_min=1"])
    assert got == {"lr": 0.001, "iters": 250, "amp": True, "fm_stages": [0, 2],
                   "teacher": "runs/t/best.safetensors", "arch": "resnet18", "grad_clip": 1.5,
                   "init": None, "scale_min": 1.0}
    assert isinstance(got["scale_min"], float)


def test_override_wins_over_file_and_file_over_defaults(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("iters: 100\nlr: 2e-3\nbatch_size: 4\n")
    config = load_config(str(path), ["iters=7"])
    assert config["iters"] == 7 and config["lr"] == 0.002 and config["batch_size"] == 4
    assert config["eval_every"] == DEFAULTS["eval_every"]


def test_unknown_key_on_the_command_line_names_it_and_suggests():
    with pytest.raises(ConfigError, match=r"unknown config key 'lrr'.*did you mean lr"):
        parse_overrides(["lrr=0.1"])


def test_unknown_key_in_a_file_names_the_file(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("iters: 10\nbatch_sise: 4\n")
    with pytest.raises(ConfigError, match=r"batch_sise.*typo\.yaml"):
        load_config(str(path))


@pytest.mark.parametrize("item, pattern", [
    ("iters=abc", "must be a int"),
    ("iters=1.5", "must be a int"),
    ("amp=maybe", "must be a bool"),
    ("optimizer=adam", "one of adamw, sgd"),
    ("loss=dice", "one of ohem, ce"),
    ("lr", "key=value"),
    ("fm_stages=[a", "not a valid value"),
])
def test_bad_values_are_refused_with_the_key(item, pattern):
    with pytest.raises(ConfigError, match=pattern):
        parse_overrides([item])


@pytest.mark.parametrize("item, message", [
    ("iters=0", "iters must be positive, got 0"),
    ("batch_size=-1", "batch_size must be positive, got -1"),
    ("scale_min=3", "need 0 < scale_min <= scale_max, got 3.0, 2.0"),
    ("fg_mask_ratio=1", r"fg_mask_ratio must be in \[0, 1\), got 1.0"),
    ("fm_stages=[-1]", r"fm_stages must be a list of stage indices >= 0, got \[-1\]"),
    ("checkpoint_every=0", "checkpoint_every must be positive or null, got 0"),
])
def test_cross_key_checks(item, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [item])


def test_missing_or_malformed_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "nope.yaml"))
    bad = tmp_path / "list.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(str(bad))


def test_saved_config_round_trips(tmp_path):
    config = load_config(str(CONFIG_DIR / "student.yaml"), ["iters=12", "fm_stages=[1]"])
    path = tmp_path / "config.yaml"
    save_config(config, str(path))
    assert yaml.safe_load(path.read_text()) == config
    assert load_config(None, [], base=read_yaml(str(path))) == config
    assert not list(tmp_path.glob("*.tmp*"))


def test_coerce_keeps_none_for_optional_keys():
    assert coerce("grad_clip", "null") is None
    assert coerce("stop_after", "5") == 5


def test_a_replaced_key_says_what_to_write_instead():
    with pytest.raises(ConfigError,
                       match=r"unknown config key 'kd_teacher_correct_only' in .*replaced: "
                             r"write kd_pixels: teacher_correct \(for true\) or all"):
        parse_overrides(["kd_teacher_correct_only=false"])
