import keras
import numpy as np
import pytest

from mineralnet.layers import ECA, eca_kernel_size

from helpers import eca_reference


@pytest.mark.parametrize("channels,expected", [(96, 3), (192, 5), (384, 5), (768, 5), (64, 3), (2048, 7)])
def test_adaptive_kernel_size(channels, expected):
    assert eca_kernel_size(channels) == expected
    layer = ECA()
    layer.build((None, 4, 4, channels))
    assert layer.kernel.shape == (expected, 1, 1)


@pytest.mark.parametrize("shape", [(2, 5, 7, 96), (3, 1, 1, 192), (1, 9, 3, 16)])
def test_matches_numpy_reference_at_any_spatial_size(shape):
    rng = np.random.default_rng(0)
    x = rng.normal(size=shape).astype("float32")
    layer = ECA()
    out = keras.ops.convert_to_numpy(layer(x))
    kernel = keras.ops.convert_to_numpy(layer.kernel)[:, 0, 0]
    np.testing.assert_allclose(out, eca_reference(x, kernel), rtol=1e-5, atol=1e-5)


def test_explicit_kernel_size_overrides_and_even_is_rejected():
    layer = ECA(kernel_size=7)
    layer.build((None, 8, 8, 96))
    assert layer.kernel.shape == (7, 1, 1)
    with pytest.raises(ValueError, match="odd"):
        ECA(kernel_size=4)


def test_config_round_trip_and_registration():
    layer = ECA(kernel_size=5, gamma=3, b=2, name="att")
    config = layer.get_config()
    assert {k: config[k] for k in ("kernel_size", "gamma", "b", "name")} == {"kernel_size": 5, "gamma": 3, "b": 2, "name": "att"}
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert isinstance(clone, ECA) and clone.get_config() == config
    assert keras.saving.get_registered_name(ECA) == "mineralnet>ECA"


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision(policy):
    rng = np.random.default_rng(1)
    x = (rng.normal(size=(2, 6, 6, 96)) * 3).astype("float32")
    keras.mixed_precision.set_global_policy(policy)
    try:
        layer = ECA()
        out = layer(x)
        assert keras.backend.standardize_dtype(out.dtype) == policy.split("_")[1]
        assert layer.kernel.dtype == "float32"  # weights stay float32 under mixed precision
        kernel = keras.ops.convert_to_numpy(layer.kernel)[:, 0, 0]
        reference = eca_reference(x, kernel)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    tolerance = 0.05 if policy == "mixed_bfloat16" else 0.01
    np.testing.assert_allclose(keras.ops.convert_to_numpy(keras.ops.cast(out, "float32")), reference,
                               rtol=tolerance, atol=tolerance)
