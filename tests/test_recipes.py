"""The training recipes of the MINET-7 attempts: Mixup, CutMix, EMA of weights, test-time augmentation."""

import csv
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from mineralnet.data.images import load_image
from mineralnet.data.mixing import mix_batches
from mineralnet.evaluate import TTA_VIEWS, dihedral_view, evaluate_run
from mineralnet.models import build_model
from mineralnet.rundir import Run
from mineralnet.training import ConfigError, TrainConfig, resolve_config, train
from mineralnet.training.checkpoint import RunCheckpoint
from mineralnet.training.ema import ema_callbacks
from mineralnet.training.loop import _compile, stages

NUM = 8
VALUES = np.arange(NUM, dtype=np.float32) * 30  # image i is flat grey VALUES[i], labelled class i


def flat_batches(batch=4, repeats=3):
    images = np.stack([np.full((16, 16, 3), v, np.float32) for v in VALUES])
    dataset = tf.data.Dataset.from_tensor_slices((images, np.eye(NUM, dtype=np.float32)))
    return dataset.batch(batch).repeat(repeats)


def mixed_epochs(mixup, cutmix, epochs=2, seed=3):
    """The mixed batches of `epochs` epochs; each epoch has its own key, as the training pipeline gives it."""
    return [[(x.numpy(), y.numpy()) for x, y in mix_batches(flat_batches(), mixup, cutmix, key=(seed, epoch))]
            for epoch in range(epochs)]


def test_mixup_mixes_pixels_and_labels_in_the_same_proportion():
    epochs = mixed_epochs(mixup=0.4, cutmix=0.0)
    for images, labels in epochs[0] + epochs[1]:
        np.testing.assert_allclose(labels.sum(axis=1), 1.0, atol=1e-6)
        for image, label in zip(images, labels):
            assert np.ptp(image) < 1e-3  # a blend of two flat images is flat
            assert image[0, 0, 0] == pytest.approx(float(label @ VALUES), abs=1e-3)
    first, second = ([labels.max() for _, labels in epoch] for epoch in epochs)
    assert first != second  # a new draw every epoch
    assert [y.max() for _, y in mixed_epochs(0.4, 0.0)[0]] == first  # reproducible for a seed


def test_cutmix_label_weights_are_the_pasted_pixel_shares():
    seen_boxes = 0
    for images, labels in sum(mixed_epochs(mixup=0.0, cutmix=1.0), []):
        for image, label in zip(images, labels):
            pixel_shares = np.array([np.mean(image[..., 0] == v) for v in VALUES])
            np.testing.assert_allclose(pixel_shares, label, atol=1e-6)
            seen_boxes += np.count_nonzero(pixel_shares) == 2
    assert seen_boxes > 0


def test_mixup_and_cutmix_together_use_both():
    kinds = {len(np.unique(x[0])) for x, _ in sum(mixed_epochs(mixup=0.4, cutmix=1.0, epochs=4), [])}
    assert kinds == {1, 2}  # flat blends (Mixup) and pasted boxes (CutMix)


def test_recipe_options_are_validated():
    for bad in ({"ema": 1.0}, {"ema": 0.2}, {"mixup": -1}, {"cutmix": -0.5}):
        with pytest.raises(ConfigError):
            resolve_config(overrides={"weights": "none", "demo": True, **bad})


def test_ema_weights_are_validated_and_saved_while_training_continues_on_raw(tmp_path):
    """model.keras holds Keras' moving average (checked against a NumPy recomputation from the raw weights after
    every step), val_accuracy is measured on it, and the resumable checkpoint keeps the raw weights."""
    momentum, epochs = 0.6, 2
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (24, 32, 32, 3)).astype("float32")
    y = keras.utils.to_categorical(np.arange(24) % 3, 3)
    train_data = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    keras.utils.set_random_seed(0)
    model = build_model("simple_cnn", 3, (32, 32, 3))
    _compile(model, TrainConfig(lr=1e-2, warmup_epochs=0, label_smoothing=0.0, ema=momentum), 3, epochs)
    raw_after_step = []
    record = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: raw_after_step.append([v.numpy() for v in model.trainable_variables]))
    checkpoint = RunCheckpoint(str(tmp_path), "full", epochs)
    model.fit(train_data, validation_data=train_data, epochs=epochs, verbose=0, shuffle=False,
              callbacks=ema_callbacks(model) + [record, checkpoint])

    average = raw_after_step[0]
    for raw in raw_after_step[1:]:
        average = [momentum * a + (1 - momentum) * r for a, r in zip(average, raw)]
    best_epoch = checkpoint.best_epoch
    reference = raw_after_step[0]
    for raw in raw_after_step[1:3 * best_epoch]:
        reference = [momentum * a + (1 - momentum) * r for a, r in zip(reference, raw)]
    saved = keras.models.load_model(tmp_path / "model.keras")
    for got, want in zip(saved.trainable_variables, reference):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-5)
    assert not np.allclose(saved.trainable_variables[0].numpy(), raw_after_step[3 * best_epoch - 1][0])

    accuracy = float(np.mean(saved.predict(x, verbose=0).argmax(1) == y.argmax(1)))
    assert accuracy == pytest.approx(checkpoint.history[best_epoch - 1]["val_accuracy"], abs=1e-6)

    resumable = keras.models.load_model(tmp_path / "checkpoint" / f"epoch-{epochs}.keras")
    for got, want in zip(resumable.trainable_variables, raw_after_step[-1]):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-6, atol=1e-6)
    for got, want in zip(model.trainable_variables, average):  # Keras finalizes fit with the average
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-5)


def test_dihedral_views_are_the_eight_symmetries_of_the_square():
    image = np.random.default_rng(1).uniform(0, 255, (1, 6, 6, 3)).astype("float32")
    views = [dihedral_view(tf.constant(image), v).numpy() for v in range(TTA_VIEWS)]
    np.testing.assert_array_equal(views[0], image)
    reference = [np.rot90(image, k, axes=(1, 2)) for k in range(4)]
    reference += [np.flip(r, axis=2) for r in reference]
    for got, want in zip(views, reference):
        np.testing.assert_array_equal(got, want)
    assert len({v.tobytes() for v in views}) == TTA_VIEWS


@pytest.mark.slow
def test_tta_is_reported_beside_the_single_view_figures(tiny_run, tmp_path):
    plain = evaluate_run(tiny_run, out_dir=str(tmp_path / "plain"))
    report = evaluate_run(tiny_run, out_dir=str(tmp_path / "tta"), tta=True)
    assert report["accuracy"] == plain["accuracy"]  # the headline stays single-view

    run = Run(tiny_run)
    rows = run.rows("test")
    model = run.load_model()
    images = np.stack([load_image(r["file"], run.image_size) for r in rows]).astype("float32")
    views = [np.rot90(images, k, axes=(1, 2)) for k in range(4)]
    views += [np.flip(v, axis=2) for v in views]
    mean = np.mean([model.predict(v, verbose=0) for v in views], axis=0)
    truth = np.array([run.labels.index(r["label"]) for r in rows])
    assert report["tta"]["views"] == 8
    assert report["tta"]["accuracy"] == pytest.approx(float(np.mean(mean.argmax(1) == truth)))
    saved = json.loads((tmp_path / "tta" / "report.json").read_text())
    assert saved["tta"] == report["tta"]
    assert "test-time augmentation" in (tmp_path / "tta" / "report.md").read_text()


def test_train_flags_reach_the_run(tmp_path, demo_data):
    config = resolve_config(overrides={
        "weights": "none", "data": demo_data, "out": str(tmp_path / "run"), "model": "simple_cnn", "image_size": 32,
        "epochs": 2, "batch_size": 16, "mixup": 0.2, "cutmix": 1.0, "ema": 0.9, "tta": True, "label_smoothing": 0.1,
    })
    run = train(config)
    saved = json.loads(open(os.path.join(run, "config.json")).read())
    assert (saved["mixup"], saved["cutmix"], saved["ema"], saved["tta"]) == (0.2, 1.0, 0.9, True)
    report = json.loads(open(os.path.join(run, "eval", "report.json")).read())
    assert 0.0 <= report["tta"]["accuracy"] <= 1.0


def test_progressive_stages_split_the_epochs_evenly():
    config = resolve_config(overrides={"weights": "none", "demo": True, "image_size": 64, "epochs": 6, "progressive_sizes": "32,48"})
    assert config.progressive_sizes == (32, 48)
    assert stages(config) == [(0, 2, 32), (2, 4, 48), (4, 6, 64)]
    assert stages(resolve_config(overrides={"weights": "none", "demo": True, "epochs": 5})) == [(0, 5, 224)]
    for bad in ({"progressive_sizes": [48, 32]}, {"progressive_sizes": [64]}, {"progressive_sizes": [16]},
                {"progressive_sizes": [32, 48], "epochs": 2}, {"progressive_sizes": [32], "model": "simple_cnn"}):
        with pytest.raises(ConfigError):
            resolve_config(overrides={"weights": "none", "demo": True, "image_size": 64, "epochs": 6, **bad})


@pytest.mark.slow
def test_progressive_resizing_trains_each_stage_at_its_size_and_serves_at_image_size(tmp_path, demo_data):
    config = resolve_config(overrides={
        "weights": "none", "data": demo_data, "out": str(tmp_path / "run"), "model": "eca_convnext_tiny",
        "image_size": 48, "epochs": 2, "batch_size": 16, "progressive_sizes": [32], "ema": 0.9,
    })
    run = train(config)
    with open(os.path.join(run, "history.csv")) as handle:
        assert [int(row["image_size"]) for row in csv.DictReader(handle)] == [32, 48]
    assert keras.models.load_model(os.path.join(run, "model.keras")).input_shape == (None, 48, 48, 3)
    assert json.loads(open(os.path.join(run, "eval", "report.json")).read())["num_samples"] > 0
