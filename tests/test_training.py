import csv
import json
import os
import subprocess
import sys

import keras
import pytest

from mineralnet.data import make_demo_dataset
from mineralnet.models import build_model, model_info, register_all
from mineralnet.training import ConfigError, resolve_config, run_from_args, train
from mineralnet.training.loop import _set_backbone_trainable

from helpers import REPO


def history_rows(run):
    with open(os.path.join(run, "history.csv")) as handle:
        return list(csv.DictReader(handle))


def test_loop_really_learns_separable_synthetic_data(tmp_path):
    data = make_demo_dataset(str(tmp_path / "data"), num_classes=4, images_per_class=30, image_size=40, seed=1)
    config = resolve_config(overrides={
        "weights": "none", "data": data, "out": str(tmp_path / "run"), "model": "simple_cnn", "image_size": 32,
        "epochs": 12, "batch_size": 16, "lr": 3e-3, "evaluate": False,
    })
    run = train(config)
    rows = history_rows(run)
    assert [int(r["epoch"]) for r in rows] == list(range(1, 13))
    assert max(float(r["val_accuracy"]) for r in rows) >= 0.9
    rates = [float(r["learning_rate"]) for r in rows]  # the rate each epoch trained at (its first step's)
    assert rates[0] == pytest.approx(3e-3) and rates == sorted(rates, reverse=True) and rates[-1] > 0


def test_config_file_then_flags_and_clear_errors(tmp_path, demo_data):
    config_file = tmp_path / "options.yaml"
    config_file.write_text(f"data: {demo_data}\nmodel: simple_cnn\nimage_size: 40\nepochs: 2\nlr: 0.01\n")
    run = run_from_args({"out": str(tmp_path / "run"), "lr": 0.002, "image_size": 32, "evaluate": False, "weights": "none"},
                        str(config_file))
    saved = json.load(open(os.path.join(run, "config.json")))
    assert (saved["model"], saved["image_size"], saved["lr"], saved["epochs"]) == ("simple_cnn", 32, 0.002, 2)
    assert saved["batch_size"] == 32  # untouched default
    with pytest.raises(ConfigError, match="already holds a run.*--resume"):
        run_from_args({"out": run}, str(config_file))
    with pytest.raises(ConfigError, match="unknown option 'learning_rate'"):
        resolve_config({"learning_rate": 1})
    with pytest.raises(ConfigError, match="no data"):
        resolve_config()


def test_cli_reports_missing_data_without_writing(tmp_path):
    done = subprocess.run([sys.executable, "train.py", "--weights", "none", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "run")],
                          cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 2
    assert "error: data directory" in done.stderr and "does not exist" in done.stderr
    assert not os.path.exists(tmp_path / "run")


def test_one_epoch_under_mirrored_strategy_on_two_cpu_devices(tmp_path, demo_data):
    done = subprocess.run(
        [sys.executable, "train.py", "--weights", "none", "--data", demo_data, "--out", str(tmp_path / "run"), "--model", "simple_cnn",
         "--image-size", "32", "--epochs", "1", "--batch-size", "8", "--strategy", "mirrored", "--cpu-devices", "2"],
        cwd=REPO, capture_output=True, text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "MirroredStrategy with 2 replica(s)" in done.stdout
    assert "epoch 1/1 step " in done.stdout  # progress lines although stdout is no terminal
    assert [int(r["epoch"]) for r in history_rows(tmp_path / "run")] == [1]
    assert os.path.exists(tmp_path / "run" / "eval" / "report.json")


def test_frozen_warm_up_trains_only_attention_and_head(tmp_path, demo_data):
    model = build_model("eca_convnext_tiny", 4, (32, 32, 3))
    _set_backbone_trainable(model, False)
    trainable = sorted(v.path for v in model.trainable_weights)
    assert trainable == sorted([f"eca_stage_{i}/kernel" for i in range(4)] + ["predictions/kernel", "predictions/bias"])
    config = resolve_config(overrides={"weights": "none", "data": demo_data, "out": str(tmp_path / "run"), "model": "simple_cnn",
                                       "image_size": 32, "epochs": 3, "freeze_epochs": 1, "evaluate": False})
    run = train(config)
    assert [r["phase"] for r in history_rows(run)] == ["frozen", "full", "full"]


def test_frozen_warm_up_trains_the_head_layers_its_registry_entry_names():
    model = build_model("eca_resnet18", 4, (32, 32, 3), dropout=0.1)
    _set_backbone_trainable(model, False)
    assert {layer.name for layer in model.layers if layer.trainable} == set(model_info("eca_resnet18").head_layers)
    assert sorted(v.path for v in model.trainable_weights) == ["predictions/bias", "predictions/kernel"]
    _set_backbone_trainable(model, True)
    assert len(model.trainable_weights) > 2


def test_mixed_precision_run_restores_the_callers_policy(tmp_path, demo_data):
    config = resolve_config(overrides={"weights": "none", "data": demo_data, "out": str(tmp_path / "run"), "model": "simple_cnn",
                                       "image_size": 32, "epochs": 1, "mixed_precision": "bfloat16", "evaluate": False})
    run = train(config)
    assert keras.mixed_precision.global_policy().name == "float32"
    register_all()  # mineralnet's Keras classes (ECA, ...) for keras.models.load_model

    model = keras.models.load_model(os.path.join(run, "model.keras"))
    assert model.get_layer("conv_0").dtype_policy.name == "mixed_bfloat16"
    assert model.get_layer("predictions").dtype_policy.name == "float32"  # softmax kept in float32
