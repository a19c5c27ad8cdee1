"""int8's selective-quantization options (mineralnet.export.convert: `float_ops`, `per_channel`), which
benchmarks/int8_fidelity.py measures (issue 25 point 2): a tiny residual model really converted and read back."""

import keras
import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter, OpResolverType

from mineralnet.export import convert
from mineralnet.export.delegation import ALLOWED_OUTSIDE, delegation


@pytest.fixture(scope="module")
def residual():
    """conv -> conv + residual ADD -> pooled Dense softmax, 16 px, and 8 calibration images."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(x)
    x = keras.layers.Add()([x, keras.layers.Conv2D(8, 3, padding="same")(x)])
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="predictions")(x))
    images = np.random.RandomState(0).randint(0, 256, (8, 16, 16, 3)).astype(np.uint8)
    return model, images


def _ops_and_tensors(model_bytes):
    """({op name: set of output dtypes}, tensor details) of a file, read without the XNNPACK delegate."""
    interpreter = Interpreter(model_content=model_bytes,
                              experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interpreter.allocate_tensors()
    details = interpreter.get_tensor_details()
    dtypes = {d["index"]: np.dtype(d["dtype"]) for d in details}
    ops = {}
    for node in interpreter._get_ops_details():
        ops.setdefault(node["op_name"], set()).update(dtypes[t] for t in node["outputs"])
    return ops, details


def test_float_ops_keep_the_residual_add_float_in_one_xnnpack_partition(residual):
    model, images = residual
    default, _ = _ops_and_tensors(convert(model, "int8", 16, images))
    assert default["ADD"] == {np.dtype(np.int8)}  # the default quantises it
    model_bytes = convert(model, "int8", 16, images, float_ops=("ADD",))
    ops, _ = _ops_and_tensors(model_bytes)
    assert ops["ADD"] == {np.dtype(np.float32)} and np.dtype(np.int8) in ops["CONV_2D"]
    measured = delegation(model_bytes)
    assert measured["partitions"] == 1 and set(measured["outside"]) <= ALLOWED_OUTSIDE, measured


def test_per_channel_false_gives_one_weight_scale_per_tensor(residual):
    model, images = residual

    def weight_scales(model_bytes):
        _, details = _ops_and_tensors(model_bytes)
        return [len(d["quantization_parameters"]["scales"]) for d in details
                if np.dtype(d["dtype"]) == np.int8 and len(d["shape"]) == 4 and d["shape"][0] == 8]

    assert max(weight_scales(convert(model, "int8", 16, images))) == 8  # per output channel, the default
    assert weight_scales(convert(model, "int8", 16, images, per_channel=False)) == [1, 1]
