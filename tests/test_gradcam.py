"""Grad-CAM explains the class logit (not the saturating softmax probability), finds the evidence where it is, and
never writes two inputs to the same file. (The CLI and per-registry-model checks are in test_evaluate.py.)"""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from mineralnet import rundir
from mineralnet.gradcam import feature_map_tensor, gradcam_heatmaps, gradcam_run, output_names, softmax_head
from mineralnet.models import build_model, feature_layer, model_info

from helpers import OLD_FEATURE_LAYER, with_old_layer_names

SIZE, PATCH = 32, 6


def patch_images(rng, labels):
    """Dim noise (0-120); images of class 1 carry a saturated red PATCH x PATCH square inside the top-left
    quadrant, the only evidence of their class."""
    images = rng.uniform(0, 120, (len(labels), SIZE, SIZE, 3)).astype("float32")
    for index in np.flatnonzero(labels):
        row, column = rng.integers(0, SIZE // 2 - PATCH + 1, 2)
        images[index, row:row + PATCH, column:column + PATCH] = (255, 0, 0)
    return images


def tiny_model(activation="softmax", name="predictions", seed=0):
    """Two 3x3 convolutions, global average pooling and a 2-way head: the shape of every registry model's top."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(x)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(2, activation=activation, dtype="float32", name=name)(x))


@pytest.fixture(scope="module")
def patch_model():
    """tiny_model trained 5 epochs (about 2 s) to tell red-patch images (class 1) from plain noise (class 0)."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 256)
    model = tiny_model()
    model.compile(keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy")
    model.fit(patch_images(rng, labels), labels, epochs=5, batch_size=32, verbose=0)
    return model


@pytest.fixture(scope="module")
def patch_batch():
    """8 class-1 test images (a red patch in the top-left quadrant each), unseen in training."""
    return patch_images(np.random.default_rng(100), np.ones(8, int))


def reference_gradcam(model, images, classes):
    """Textbook Grad-CAM by a plain eager tape of the model's output as the score: the logit for a linear head,
    the probability (what the old code differentiated) for a softmax one. Also returns the gradients."""
    pooling = next(layer for layer in model.layers if isinstance(layer, keras.layers.GlobalAveragePooling2D))
    explainer = keras.Model(model.inputs, [pooling.input, model.outputs[0]])
    with tf.GradientTape() as tape:
        features, scores = explainer(tf.constant(images), training=False)
        score = tf.reduce_sum(tf.gather(scores, classes, axis=1, batch_dims=1))
    gradients = tape.gradient(score, features)
    cam = tf.nn.relu(tf.reduce_sum(tf.reduce_mean(gradients, axis=(1, 2), keepdims=True) * features, -1)).numpy()
    peak = cam.reshape(len(cam), -1).max(axis=1)[:, None, None]
    return np.divide(cam, peak, out=np.zeros_like(cam), where=peak > 0), gradients.numpy()


def with_head(model, activation=None, scale=1.0):
    """A copy of `model` whose predictions layer has `activation` and its kernel and bias times `scale`."""
    def clone(layer):
        config = layer.get_config()
        if layer.name == "predictions":
            config["activation"] = activation
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    head = copy.get_layer("predictions")
    head.set_weights([weight * scale for weight in head.get_weights()])
    return copy


def test_the_map_is_that_of_the_logit(patch_model, patch_batch):
    classes = np.ones(len(patch_batch), int)
    heatmaps, probabilities = gradcam_heatmaps(patch_model, patch_batch, classes)
    expected, _ = reference_gradcam(with_head(patch_model, activation=None), patch_batch, classes)
    np.testing.assert_allclose(heatmaps, expected, atol=1e-5)
    np.testing.assert_allclose(probabilities, patch_model.predict(patch_batch, verbose=0), atol=1e-6)


def test_a_saturated_softmax_still_gives_the_same_nonzero_map(patch_model, patch_batch):
    """Head x 1000: p = 1.0 exactly in float32, so the probability's gradient (what the old code differentiated)
    is exactly zero and its maps were all zeros; the logit's gradient is only scaled, and the map is unchanged."""
    saturated = with_head(patch_model, activation="softmax", scale=1000.0)
    classes = np.ones(len(patch_batch), int)
    heatmaps, probabilities = gradcam_heatmaps(saturated, patch_batch)
    assert (probabilities[:, 1] == 1.0).all()  # the premise: saturated in float32
    old_maps, old_gradients = reference_gradcam(saturated, patch_batch, classes)
    assert not old_gradients.any() and not old_maps.any()
    assert (heatmaps.reshape(len(heatmaps), -1).max(axis=1) == 1.0).all()
    np.testing.assert_allclose(heatmaps, gradcam_heatmaps(patch_model, patch_batch, classes)[0], atol=1e-4)


def test_the_map_sits_on_the_quadrant_holding_the_evidence(patch_model, patch_batch):
    """Measured over training seeds 0-4: every map had >= 0.615 of its mass in the patch's quadrant (a quarter
    of the image); seed 0, used here, >= 0.707 on each image."""
    heatmaps, probabilities = gradcam_heatmaps(patch_model, patch_batch)
    assert (probabilities.argmax(axis=1) == 1).all()
    half = heatmaps.shape[1] // 2
    share = heatmaps[:, :half, :half].sum(axis=(1, 2)) / heatmaps.sum(axis=(1, 2))
    assert share.min() > 0.6, share


def test_mixed_precision_model(patch_batch):
    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = tiny_model()
    finally:
        keras.mixed_precision.set_global_policy(policy)
    heatmaps, probabilities = gradcam_heatmaps(model, patch_batch)
    assert np.isfinite(heatmaps).all() and heatmaps.min() >= 0 and heatmaps.max() <= 1
    assert probabilities.dtype == np.float32


@pytest.mark.parametrize("activation, name", [("softmax", "output"), (None, "predictions")])
def test_a_model_without_a_softmax_predictions_layer_is_refused(activation, name, patch_batch):
    model = tiny_model(activation, name)
    with pytest.raises(ValueError, match="Dense softmax layer named 'predictions'"):
        softmax_head(model)
    with pytest.raises(ValueError, match="needs its logits"):
        gradcam_heatmaps(model, patch_batch)


def test_output_names_are_unique_and_predictable():
    assert output_names(["x/a.jpg", "y/b.png"]) == ["a_gradcam.png", "b_gradcam.png"]
    assert output_names(["train/0000.jpg", "test/0000.jpg", "test/0001.jpg"]) == [
        "train_0000_gradcam.png", "test_0000_gradcam.png", "0001_gradcam.png"]
    # same stem with another extension or case (one file on case-insensitive disks), and the same file twice
    assert output_names(["p/A.jpg", "q/a.png"]) == ["p_A_gradcam.png", "q_a_gradcam.png"]
    assert output_names(["p/a.jpg", "p/a.jpg", "p/a.jpg"]) == [
        "p_a_gradcam.png", "p_a-2_gradcam.png", "p_a-3_gradcam.png"]
    # a prefixed name equal to another input's own stem, and a suffixed name equal to another's
    assert output_names(["x/a.jpg", "y/a.jpg", "x_a.jpg"]) == [
        "x_a_gradcam.png", "y_a_gradcam.png", "x_a-2_gradcam.png"]
    assert output_names(["d/b.jpg", "d/b.jpg", "e/d_b-2.jpg"]) == [
        "d_b_gradcam.png", "d_b-3_gradcam.png", "d_b-2_gradcam.png"]


def test_equal_file_names_in_two_folders_get_two_overlays(tiny_run, tmp_path):
    """Two `0000.jpg` from different folders used to overwrite each other's `0000_gradcam.png` silently."""
    sources = [r["file"] for r in rundir.Run(tiny_run).rows("test")[:2]]
    images = []
    for folder, source in zip(("left", "right"), sources):
        os.makedirs(tmp_path / folder)
        images.append(str(tmp_path / folder / "0000.jpg"))
        Image.open(source).convert("RGB").save(images[-1])
    written = gradcam_run(tiny_run, images, str(tmp_path / "cam"))
    assert [os.path.basename(p) for p in written] == ["left_0000_gradcam.png", "right_0000_gradcam.png"]
    assert sorted(os.listdir(tmp_path / "cam")) == ["left_0000_gradcam.png", "right_0000_gradcam.png"]
    assert all(Image.open(p).format == "PNG" for p in written)


def test_the_feature_layer_is_the_one_the_registry_names():
    model = build_model("eca_convnext_tiny", 2, (64, 64, 3))
    assert feature_layer(model).name == model_info("eca_convnext_tiny").feature_layer == "avg_pool"
    assert feature_map_tensor(model) is model.get_layer("eca_stage_3").output  # the last stage, after its ECA


def test_a_model_file_saved_before_the_feature_layer_had_its_name_gives_the_same_maps(tmp_path):
    """model.keras files of older runs have keras.applications' auto-named pooling: found by the old rule."""
    model = build_model("eca_convnext_tiny", 2, (64, 64, 3))
    path = str(tmp_path / "model.keras")
    with_old_layer_names(model).save(path)
    old = rundir.Run(tmp_path, required=()).load_model(path)
    assert model_info(old.name).feature_layer not in [layer.name for layer in old.layers]
    assert feature_layer(old).name == OLD_FEATURE_LAYER
    pixels = np.random.default_rng(0).uniform(0, 255, (3, 64, 64, 3))
    maps, probabilities = gradcam_heatmaps(model, pixels)
    old_maps, old_probabilities = gradcam_heatmaps(old, pixels)
    assert maps.shape == (3, 2, 2)
    np.testing.assert_allclose(old_maps, maps, atol=1e-6)
    np.testing.assert_allclose(old_probabilities, probabilities, atol=1e-6)
