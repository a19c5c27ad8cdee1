"""Resuming a run with changed flags, the learning rate each epoch trained at, and reproducible runs."""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from mineralnet.data import scan_dataset
from mineralnet.data.pipeline import make_dataset
from mineralnet.models import register_all
from mineralnet.training import run_from_args

from helpers import REPO

BASE = {"weights": "none", "model": "simple_cnn", "image_size": 32, "batch_size": 16, "evaluate": False}


def history(run):
    with open(os.path.join(run, "history.csv")) as handle:
        return list(csv.DictReader(handle))


def checkpoint_weights(run):
    register_all()  # mineralnet's Keras classes (ECA, ...) for keras.models.load_model

    state = json.load(open(os.path.join(run, "checkpoint", "state.json")))
    model = keras.models.load_model(os.path.join(run, "checkpoint", state["checkpoint"]))
    return model, [w.copy() for w in model.get_weights()]


def train_cli(*args):
    return subprocess.run([sys.executable, "train.py", *args], cwd=REPO, capture_output=True, text=True, timeout=600)


def test_resume_with_more_epochs_trains_them_at_a_real_learning_rate(tmp_path, demo_data):
    run = run_from_args({**BASE, "data": demo_data, "out": str(tmp_path / "run"), "epochs": 2, "lr": 0.004})
    first = history(run)
    assert float(first[0]["learning_rate"]) == pytest.approx(0.004)  # epoch 1 trained at the peak rate
    assert float(first[1]["learning_rate"]) > 0  # the last epoch too (history records the rate it trained at)
    before, weights_before = checkpoint_weights(run)

    run_from_args({"out": run, "epochs": 4}, resume=True)
    rows = history(run)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4] and rows[:2] == first
    rates = [float(r["learning_rate"]) for r in rows[2:]]
    # The cosine schedule now spans 4 epochs: epoch 3 starts half-way down, epoch 4 lower, neither at 0.
    assert rates[0] == pytest.approx(0.004 * 0.5 * (1 + np.cos(np.pi * 0.5)), rel=1e-4)
    assert 0 < rates[1] < rates[0]
    after, weights_after = checkpoint_weights(run)
    assert int(after.optimizer.iterations) == 2 * int(before.optimizer.iterations)  # moments and count kept
    assert max(np.abs(a - b).max() for a, b in zip(weights_after, weights_before)) > 1e-4  # the weights moved
    assert json.load(open(os.path.join(run, "config.json")))["epochs"] == 4  # what the run really used


def test_resume_applies_and_records_a_new_learning_rate(tmp_path, demo_data):
    run = run_from_args({**BASE, "data": demo_data, "out": str(tmp_path / "run"), "epochs": 1, "lr": 0.004})
    run_from_args({"out": run, "epochs": 2, "lr": 0.001, "label_smoothing": 0.1}, resume=True)
    saved = json.load(open(os.path.join(run, "config.json")))
    assert (saved["lr"], saved["label_smoothing"], saved["epochs"]) == (0.001, 0.1, 2)
    assert float(history(run)[1]["learning_rate"]) == pytest.approx(0.001 * 0.5 * (1 + np.cos(np.pi * 0.5)), rel=1e-4)


@pytest.fixture(scope="module")
def finished_run(demo_data, tmp_path_factory):
    """A finished 2-epoch simple_cnn run made by train.py; each refusal test resumes a copy of it."""
    out = str(tmp_path_factory.mktemp("finished") / "run")
    done = train_cli("--weights", "none", "--data", demo_data, "--out", out, "--model", "simple_cnn", "--image-size",
                     "32", "--epochs", "2", "--batch-size", "16", "--no-evaluate")
    assert done.returncode == 0, done.stderr
    return out


@pytest.mark.parametrize("flags, named", [
    (["--model", "convnext_tiny"], "--model convnext_tiny differs from the run's simple_cnn"),
    (["--image-size", "40"], "--image-size 40 differs"),
    (["--batch-size", "8"], "--batch-size 8 differs"),
    (["--epochs", "1"], "--epochs 1 is below the 2 epochs"),
])
def test_resume_refuses_flags_that_change_the_model_or_data(finished_run, tmp_path, flags, named):
    out = shutil.copytree(finished_run, tmp_path / "run")
    saved = open(os.path.join(out, "config.json")).read()
    done = train_cli("--out", str(out), "--resume", *flags)
    assert done.returncode == 2
    assert named in done.stderr and "Traceback" not in done.stderr
    assert len([line for line in done.stderr.splitlines() if line.startswith("error:")]) == 1
    assert open(os.path.join(out, "config.json")).read() == saved  # nothing changed


def test_training_batches_of_later_epochs_do_not_depend_on_where_the_run_started(demo_data):
    """A resumed run's dataset starts at its next epoch and sees exactly what an uninterrupted run sees there:
    the order, each image's augmentation and each batch's Mixup/CutMix are functions of (seed, epoch, position)."""
    classes, samples, _ = scan_dataset(demo_data)
    files = [os.path.join(demo_data, s.path) for s in samples]
    labels = [classes.index(s.label) for s in samples]
    kwargs = dict(num_classes=4, image_size=32, batch_size=16, training=True, seed=5, mixup=0.2, cutmix=1.0)
    whole = [x.numpy() for x, _ in make_dataset(files, labels, epochs=(0, 3), **kwargs)]
    resumed = [x.numpy() for x, _ in make_dataset(files, labels, epochs=(2, 3), **kwargs)]
    steps = -(-len(files) // 16)
    assert len(whole) == 3 * steps and len(resumed) == steps
    for mine, reference in zip(resumed, whole[2 * steps:]):
        np.testing.assert_array_equal(mine, reference)
    assert not np.array_equal(whole[0], whole[steps])  # and each epoch differs from the one before


def test_augmentation_draws_per_image_not_per_batch(tmp_path):
    """Keras' RandomCrop on a batch shifts every image alike: here each image of a batch gets its own shift."""
    from PIL import Image

    flat = np.zeros((32, 32, 3), np.uint8)
    flat[12:20, 12:20] = 255  # one white square in the middle of each (identical) image
    files = []
    for index in range(8):
        files.append(str(tmp_path / f"{index}.png"))
        Image.fromarray(flat).save(files[-1])
    crop_only = {"crop": True, "flip": False, "rotation": 0, "brightness": 0, "noise": 0}
    from mineralnet.data.pipeline import AugmentConfig

    batch = next(iter(make_dataset(files, [0] * 8, 2, 32, 8, training=True, augment=AugmentConfig(**crop_only))))
    centres = {tuple(np.argwhere(image[..., 0] > 127).mean(axis=0).round(1)) for image in batch[0].numpy()}
    assert len(centres) >= 4
    shifts = [np.abs(np.array(c) - 15.5).max() for c in centres]
    assert max(shifts) <= 32 / 16 + 0.5  # a shift at evaluation's scale, not a zoom


DETERMINISTIC_RUNS = ("a", "b")


@pytest.fixture(scope="module")
def deterministic_runs(demo_data, tmp_path_factory):
    """{name: (train.py process, run directory)} of two identical --deterministic runs, started together and left
    to train while test_killed_run_resumes_with_each_epoch_once runs: most of a ConvNeXt run is one thread at a
    time (TensorFlow's import, tracing the steps), so on two cores the three take little more than the killed
    run's two processes alone. Sharing the cores changes no number (what the determinism test shows)."""
    folder = tmp_path_factory.mktemp("deterministic")
    runs = {}
    for name in DETERMINISTIC_RUNS:
        out = folder / name
        with open(folder / f"{name}.log", "w") as log:
            runs[name] = (subprocess.Popen(
                [sys.executable, "train.py", "--weights", "none", "--data", demo_data, "--out", str(out), "--model",
                 "eca_convnext_tiny", "--image-size", "32", "--epochs", "2", "--batch-size", "16", "--no-evaluate",
                 "--deterministic", "--mixup", "0.2"], cwd=REPO, stdout=log, stderr=subprocess.STDOUT), out)
    yield runs
    for process, _ in runs.values():
        if process.poll() is None:  # a selection that skipped the determinism test: leave no run behind
            process.kill()
            process.wait()


@pytest.mark.slow
def test_killed_run_resumes_with_each_epoch_once(tmp_path, demo_data, deterministic_runs):
    """(deterministic_runs only so that its two runs train beside this one.)"""
    out = tmp_path / "run"
    command = [sys.executable, "train.py", "--weights", "none", "--data", demo_data, "--out", str(out), "--model",
               "eca_convnext_tiny", "--image-size", "32", "--epochs", "3", "--batch-size", "16", "--no-evaluate"]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state_file, history_file = out / "checkpoint" / "state.json", out / "history.csv"
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        # history.csv comes after state.json at an epoch's end: killed between the two, the run is consistent
        # (its history is in state.json) but this test would find no epoch-1 row to compare (seen under load).
        if history_file.exists() and json.loads(state_file.read_text())["epoch"] >= 1:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)  # no clean shutdown: the files must already be consistent
    process.wait()
    state = json.loads(state_file.read_text())
    assert state["epoch"] == 1, "the run must be killed during epoch 2 for this test to mean anything"
    epoch_1 = history(out)[0]

    done = subprocess.run(command + ["--resume"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    rows = history(out)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert rows[0] == epoch_1
    register_all()  # mineralnet's Keras classes (ECA, ...) for keras.models.load_model

    final = keras.models.load_model(out / "checkpoint" / "epoch-3.keras")
    steps_per_epoch = -(-sum(1 for line in open(out / "split.csv") if line.endswith(",train\n")) // 16)
    assert int(final.optimizer.iterations) == 3 * steps_per_epoch  # optimizer state carried across the kill
    assert float(rows[-1]["learning_rate"]) > 0
    assert sorted(os.listdir(out / "checkpoint")) == ["epoch-3.keras", "state.json"]  # no stale or temp files
    keras.models.load_model(out / "model.keras")  # the best model is intact


@pytest.mark.slow
def test_deterministic_runs_give_identical_history(deterministic_runs):
    runs = []
    for process, out in deterministic_runs.values():
        assert process.wait(600) == 0, (out.parent / f"{out.name}.log").read_text()[-3000:]
        runs.append([{k: v for k, v in row.items() if k != "seconds"} for row in history(out)])  # wall time aside
    assert runs[0] == runs[1]
