"""Options that make no sense are refused before anything is written; ImageNet weights by default, with a clear
line when they cannot be had."""

import dataclasses
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from mineralnet.models import WeightsError, build_model
from mineralnet.models.convnext import convnext_tiny_backbone
from mineralnet.models.weights import save_backbone_weights
from mineralnet.train_cli import train_parser
from mineralnet.training import DEFAULTS, ConfigError, resolve_config
from mineralnet.training.config import CHOICES, FIELDS, FIXED_ON_RESUME, markdown_table

from helpers import REPO

OFFLINE = {"https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"}  # a closed port: no download


def errors(stderr):
    """The lines our code wrote to stderr (TensorFlow's C++ start-up may print its own before them)."""
    return [line for line in stderr.splitlines() if line.startswith("error:")]


@pytest.mark.parametrize("bad, named", [
    ({"lr": -1}, "option 'lr' must be positive"),
    ({"lr": 0}, "option 'lr' must be positive"),
    ({"lr": "fast"}, "option 'lr' must be a number"),
    ({"lr": float("nan")}, "finite"),
    ({"label_smoothing": -0.1}, "option 'label_smoothing' must be at least 0 and below 1"),
    ({"label_smoothing": 1.0}, "label_smoothing"),
    ({"dropout": 1.0}, "option 'dropout' must be at least 0 and below 1"),
    ({"mixup": -0.2}, "option 'mixup' must be 0 (off) or positive"),
    ({"cutmix": -1}, "option 'cutmix'"),
    ({"warmup_epochs": 5, "epochs": 5}, "warmup_epochs must be at least 0 and less than epochs"),
    ({"epochs": 2.5}, "option 'epochs' must be a whole number"),
    ({"class_weights": "yes"}, "option 'class_weights' is a switch"),
    ({"limit_per_class": 0}, "limit_per_class"),
    ({"augment": {"rotation": -0.1}}, "augmentation option 'rotation'"),
])
def test_values_that_make_no_sense_are_refused(bad, named):
    with pytest.raises(ConfigError) as error:
        resolve_config(overrides={"demo": True, **bad})
    assert named in str(error.value)


def test_numbers_from_a_config_file_are_cast_once():
    config = resolve_config({"demo": True, "lr": "0.002", "epochs": "3", "image_size": 64.0})
    assert (config.lr, config.epochs, config.image_size) == (0.002, 3, 64)
    assert isinstance(config.epochs, int) and isinstance(config.lr, float)


def test_negative_learning_rate_stops_the_cli_before_anything_is_written(tmp_path, demo_data):
    done = subprocess.run([sys.executable, "train.py", "--data", demo_data, "--out", str(tmp_path / "run"), "--lr",
                           "-1"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 2 and "option 'lr' must be positive" in done.stderr
    assert not os.path.exists(tmp_path / "run")


def test_imagenet_is_the_default_and_offline_it_stops_with_the_two_fixes(tmp_path, demo_data):
    assert DEFAULTS["weights"] == "imagenet"
    env = dict(os.environ, KERAS_HOME=str(tmp_path / "keras_home"), **OFFLINE)  # no cached copy either
    done = subprocess.run([sys.executable, "train.py", "--data", demo_data, "--out", str(tmp_path / "run"),
                           "--image-size", "32", "--epochs", "1"], cwd=REPO, capture_output=True, text=True, env=env)
    assert done.returncode == 2, done.stderr
    lines = errors(done.stderr)
    assert len(lines) == 1 and "Traceback" not in done.stderr
    assert "could not be downloaded" in lines[0] and "--weights PATH" in lines[0] and "--weights none" in lines[0]
    assert "python -m mineralnet.models.weights" in lines[0]
    assert not os.path.exists(tmp_path / "run" / "config.json")  # nothing of a run was written


def test_models_without_imagenet_weights_say_so():
    with pytest.raises(WeightsError, match="simple_cnn has no pretrained weights: use --weights none"):
        build_model("simple_cnn", 3, (32, 32, 3), weights="imagenet")
    with pytest.raises(WeightsError, match="googlenet has no ImageNet weights"):
        build_model("googlenet", 3, (32, 32, 3), weights="imagenet")


def test_a_saved_backbone_file_gives_the_same_backbone(tmp_path):
    """The file `python -m mineralnet.models.weights` writes (here from a backbone with known, non-ImageNet
    values: this machine cannot download) loads into the registry model exactly."""
    backbone = convnext_tiny_backbone((32, 32, 3))
    for variable in backbone.weights:
        variable.assign(variable + 0.25)
    path = save_backbone_weights("eca_convnext_tiny", str(tmp_path / "convnext.weights.h5"), backbone=backbone)
    model = build_model("eca_convnext_tiny", 3, (64, 64, 3), weights=path)  # any input size
    layer = backbone.layers[3].name
    for mine, reference in zip(model.get_layer(layer).weights, backbone.get_layer(layer).weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(mine), keras.ops.convert_to_numpy(reference))
    with pytest.raises(WeightsError, match="must end in .weights.h5"):
        save_backbone_weights("eca_convnext_tiny", str(tmp_path / "x.h5"), backbone=backbone)


def test_weights_command_offline_is_one_line(tmp_path):
    env = dict(os.environ, KERAS_HOME=str(tmp_path / "keras_home"), **OFFLINE)
    done = subprocess.run([sys.executable, "-m", "mineralnet.models.weights", "--model", "resnet50", "--out",
                           str(tmp_path / "r.weights.h5")], cwd=REPO, capture_output=True, text=True, env=env)
    assert done.returncode == 2 and len(errors(done.stderr)) == 1 and "Traceback" not in done.stderr
    assert "could not be downloaded" in done.stderr and not os.path.exists(tmp_path / "r.weights.h5")


def test_readme_flag_table_is_the_option_table():
    """README.md holds `python -m mineralnet.train_cli --markdown` verbatim: every flag, with its default."""
    table = markdown_table()
    assert table in open(os.path.join(REPO, "README.md")).read(), \
        "README.md's train.py flag table is stale: paste `python -m mineralnet.train_cli --markdown` over it"
    for key, value in DEFAULTS.items():
        flag = FIELDS[key]["flag"] or "--" + key.replace("_", "-")
        row = next(line for line in table.splitlines() if line.startswith(f"| `{flag}"))
        if value not in (None, False, (), []) and key not in ("augment", "evaluate"):
            assert f"`{value}`" in row, row


def test_flags_and_resume_rules_come_from_the_option_table():
    parser = train_parser()
    flags = {action.dest: action for action in parser._actions}
    assert set(DEFAULTS) | {"help", "config", "resume"} == set(flags)
    assert all(flags[key].default is None for key in DEFAULTS)  # unset flags fall through to --config, then DEFAULTS
    assert flags["evaluate"].option_strings == ["--no-evaluate"] and flags["mixed_precision"].choices == CHOICES[
        "mixed_precision"]
    assert set(FIXED_ON_RESUME) == {"data", "demo", "model", "weights", "image_size", "split", "split_ratios",
                                    "limit_per_class", "seed", "dropout", "mixed_precision", "ema", "freeze_epochs",
                                    "progressive_sizes", "batch_size"}
    config = resolve_config({"demo": True, "progressive_sizes": "32,48", "image_size": 64})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.lr = 1.0
    assert config.to_dict()["progressive_sizes"] == [32, 48] and config.to_dict()["augment"] == DEFAULTS["augment"]
    assert resolve_config(config.to_dict()) == config  # config.json resolves back to the same config
