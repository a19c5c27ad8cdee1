"""The int8 fidelity tools of issue 25 point 2 (benchmarks/int8_fidelity.py measures them on MINET-7): LayerNorm
equalization is exact in float and balances the ranges, folding it keeps int8 one XNNPACK
partition, bias correction removes the int8 file's mean shifts,
percentile ranges only narrow. Small models, real conversions and interpreters."""

import keras
import numpy as np
import pytest

from mineralnet import build_model
from mineralnet.export.bias_correction import _biased_layers, channel_means, correct_biases
from mineralnet.export.convert import convert, make_converter, quantize_calibrated
from mineralnet.export.delegation import ALLOWED_OUTSIDE, delegation
from mineralnet.export.equalize import activation_ranges, equalization_pairs, equalize
from mineralnet.export.pipeline import _ExportModels
from mineralnet.export.ranges import _ranged_tensors, percentile_ranges
from mineralnet.export.rewrite import rewrite_for_export

SIZE = 16


def _small_model(seed=0):
    """Conv stem -> LayerNorm -> Dense (a ConvNeXt block's pair), a Sequential [LayerNorm, 2x2 Conv2D] (the
    downsampling pair), GAP -> LayerNorm -> Dropout -> Dense (the head's pair); LayerNorm gammas spread over two
    orders of magnitude, as trained ConvNeXt's are, and non-zero betas and biases."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(8, 3, padding="same")(x)
    x = keras.layers.LayerNormalization(epsilon=1e-6)(x)
    x = keras.layers.Dense(16, activation="relu")(x)
    x = keras.Sequential([keras.layers.LayerNormalization(epsilon=1e-6), keras.layers.Conv2D(12, 2, strides=2)])(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.LayerNormalization(epsilon=1e-6)(x)
    x = keras.layers.Dropout(0.2)(x)
    model = keras.Model(inputs, keras.layers.Dense(5, activation="softmax")(x))
    rng = np.random.RandomState(seed)
    weights = []
    for weight, variable in zip(model.get_weights(), model.weights):
        values = rng.normal(0, 0.3, weight.shape)
        if "gamma" in variable.path:
            values = np.exp(rng.uniform(-2.5, 2.5, weight.shape)) * rng.choice([-1, 1], weight.shape)
        weights.append(values.astype(np.float32))
    model.set_weights(weights)
    return model


def _images(count, seed=1):
    return np.random.RandomState(seed).randint(0, 256, (count, SIZE, SIZE, 3)).astype(np.uint8)


def test_equalization_is_exact_in_float_and_gives_activations_the_weights_range():
    model = _small_model()
    clone, _ = rewrite_for_export(model)
    images = _images(16)
    before = clone.predict(images.astype(np.float32), verbose=0)
    pairs = [(norm.name, linear.name) for _, norm, linear in equalization_pairs(clone)]
    assert len(pairs) == 3 and {type(linear) for _, _, linear in equalization_pairs(clone)} == {
        keras.layers.Dense, keras.layers.Conv2D}
    spread_before = {name: r.max() / r.min() for name, r in activation_ranges(
        clone, equalization_pairs(clone), images).items()}
    assert equalize(clone, images, alpha=0.5) == 3
    after = clone.predict(images.astype(np.float32), verbose=0)
    assert np.abs(after - before).max() <= 1e-5
    assert np.abs(model.predict(images.astype(np.float32), verbose=0) - after).max() <= 1e-5  # model untouched
    # alpha 0.5: each channel's activation range equals its kernel row's range (SmoothQuant's balance)
    pairs = equalization_pairs(clone)
    ranges = activation_ranges(clone, pairs, images)
    for _, norm, linear in pairs:
        kernel = keras.ops.convert_to_numpy(linear.kernel)
        rows = np.abs(np.moveaxis(kernel, 0 if kernel.ndim == 2 else 2, 0)).reshape(kernel.shape[
            0 if kernel.ndim == 2 else 2], -1).max(1)
        np.testing.assert_allclose(ranges[norm.name], rows, rtol=1e-4)
        assert ranges[norm.name].max() / ranges[norm.name].min() < spread_before[norm.name]


def test_equalization_finds_every_convnext_pair():
    """ECA-ConvNeXt-T: 18 blocks (LayerNorm -> pointwise Dense), 3 downsampling (LayerNorm -> 2x2 Conv2D), the head
    (LayerNorm -> classifier); the stem's LayerNorm feeds a depthwise convolution and is left alone."""
    clone, _ = rewrite_for_export(build_model("eca_convnext_tiny", 4, (32, 32, 3)), gelu="sigmoid")
    kinds = [type(linear).__name__ for _, _, linear in equalization_pairs(clone)]
    assert len(kinds) == 22 and kinds.count("Conv2D") == 3 and kinds.count("Dense") == 19


def _calibrated_int8(model, images):
    """(converter, calibrate-only bytes, int8 bytes) of `model`, as the export converts int8."""
    converter = make_converter(model, "int8", SIZE, images)
    converter._experimental_calibrate_only = True
    calibrated = converter.convert()
    return converter, calibrated, quantize_calibrated(converter, calibrated)


def test_bias_correction_removes_the_int8_mean_shift_of_every_layer():
    model, _ = rewrite_for_export(_small_model(seed=3))
    images = _images(32, seed=4)
    _, calibrated, quantized = _calibrated_int8(model, images)
    names = [name for name, _, _ in _biased_layers(bytearray(quantized))]
    assert len(names) == 4  # the stem conv, the Dense, the downsampling conv, the classifier

    def shifts(model_bytes):
        reference = channel_means(calibrated, names, images)
        measured = channel_means(model_bytes, names, images)
        return np.array([np.abs(measured[name] - reference[name]).mean() for name in names])

    corrected, removed = correct_biases(quantized, calibrated, images)
    assert list(removed) == names
    before, after = shifts(quantized), shifts(corrected)
    assert after.sum() < 0.5 * before.sum(), (before, after)
    assert delegation(corrected) == delegation(quantized)  # the same graph: only bias values changed
    assert len(corrected) == len(quantized) and corrected != quantized


def test_percentile_ranges_only_narrow_and_narrow_an_outlier():
    model, _ = rewrite_for_export(_small_model(seed=5))
    images = _images(32, seed=6)
    images[0] = 255  # one saturated image: the min/max ranges cover it, the 99th percentile does not
    _, calibrated, _ = _calibrated_int8(model, images)
    narrowed, count = percentile_ranges(calibrated, images, percentile=99.0)
    old, new = _ranged_tensors(bytearray(calibrated)), _ranged_tensors(bytearray(narrowed))
    assert set(old) == set(new) and count > 0
    changed = 0
    for index, (low, high) in old.items():
        assert low[0] <= new[index][0][0] < new[index][1][0] <= high[0], index
        changed += (new[index][0][0], new[index][1][0]) != (low[0], high[0])
    assert changed == count
    assert percentile_ranges(calibrated, images, percentile=100.0)[1] == 0  # the 100th percentile is the max


def _near_zero_betas(model, scale=1e-5):
    """Betas as a model early in training has them: their int8 scale ~2^-12 of the LayerNorm output's."""
    rng = np.random.RandomState(7)
    for layer in model._flatten_layers():
        if isinstance(layer, keras.layers.LayerNormalization):
            layer.beta.assign(rng.normal(0, scale, layer.beta.shape).astype(np.float32))
    return model


@pytest.mark.parametrize("batch", [1, None])
def test_folded_layernorm_affine_keeps_int8_one_xnnpack_partition(batch):
    """The export's int8 clone folds each LayerNorm's gamma and beta into the next layer (exactly, in float);
    without the fold a near-zero beta's int8 ADD is refused by XNNPACK and splits the delegate (before: 22 partitions
    for int8 and int8_qat of the 2-epoch test run with --batch dynamic, 4 at batch 1)."""
    model = _near_zero_betas(_small_model(seed=8))
    images = _images(16, seed=9)
    plain, _ = rewrite_for_export(model, gelu="sigmoid", free_batch=batch is None)
    models = _ExportModels(model, free_batch=batch is None)
    folded = models.get("int8")
    assert list(models.rewrites.values())[0]["LayerNorm affine folded into the next layer"] == 3
    x = images.astype(np.float32)
    assert np.abs(folded.predict(x, verbose=0) - plain.predict(x, verbose=0)).max() <= 1e-5
    before = delegation(convert(plain, "int8", SIZE, images, batch))
    after = delegation(convert(folded, "int8", SIZE, images, batch))
    assert before["partitions"] > 1 and "ADD" in before["outside"], before
    assert after["partitions"] == 1 and set(after["outside"]) <= ALLOWED_OUTSIDE, after
