"""Keras model -> .tflite bytes in one of the formats, batch fixed to 1 (or free, opt-in), TFLite builtin ops only."""

from mineralnet._tf import import_tensorflow

import_tensorflow()  # first: its start-up lines stay hidden (importing mineralnet.export no longer starts it)
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from mineralnet.export.dynamic import float_depthwise_filters  # noqa: E402
from mineralnet.export.errors import ExportError  # noqa: E402
from mineralnet.export.operators import check_no_flex, tensor_names  # noqa: E402
from mineralnet.export.options import (  # noqa: E402, F401  (the format names, re-exported)
    ALL_FORMATS, BATCHES, FORMATS, FULL_INTEGER, QAT_FORMAT, parse_batch, parse_formats)
from mineralnet.export.rewrite import FLOAT_MARKER  # noqa: E402


def _concrete_function(model, image_size, pin_input_range, batch=1):
    """A float32 graph of the model, batch 1 or free (None). A free batch adds SHAPE/GATHER/PACK ops that split
    the XNNPACK delegate into many pieces unless `model` went through rewrite_for_export(free_batch=True)."""
    spec = tf.TensorSpec([batch, image_size, image_size, 3], tf.float32, name="image")

    def forward(image):
        if pin_input_range:
            # The input domain is the pixel range 0-255, not whatever the calibration sample spans: this pins
            # the quantised input to scale 1.0, zero point 0, so uint8 camera pixels go in unchanged.
            image = tf.quantization.fake_quant_with_min_max_args(image, min=0.0, max=255.0, num_bits=8)
        return model(image, training=False)

    return tf.function(forward, input_signature=[spec]).get_concrete_function()


def _weights_holder(model):
    """The trackable object that hands `model`'s weights to the converter. It freezes only variables reachable from
    the object it is given; Keras 3 variables are not tracked by the model as a tf.Module, so without this holder the
    weights stay out of the file. (tf_keras variables, from the QAT child, are tf.Variables already.)"""
    holder = tf.Module()
    holder.weights = [v if isinstance(v, tf.Variable) else v.value for v in model.variables]
    return holder


def convert_network(model, input_shape, fmt="float32", calibration=None):
    """The .tflite bytes of a Keras network that is not one of the registry's image classifiers (edge/contact.py's
    contact line, for one): one float32 input of `input_shape` (batch included), TFLite builtin ops only; float32,
    `dynamic` (int8 weights, float activations) or `int8` (int8 weights and activations, scaled on `calibration`:
    inputs of that shape without the batch; the file's input and output stay float32)."""
    if fmt not in ("float32", "dynamic", "int8"):
        raise ExportError(f"convert_network makes float32, dynamic or int8 files, not '{fmt}'.")
    function = tf.function(lambda x: model(x, training=False),
                           input_signature=[tf.TensorSpec(input_shape, tf.float32)]).get_concrete_function()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function], _weights_holder(model))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if fmt != "float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if fmt == "int8":
        if calibration is None or len(calibration) == 0:
            raise ExportError("the int8 format needs calibration inputs.")
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.representative_dataset = lambda: ([item[None].astype(np.float32)] for item in calibration)
    return converter.convert()


def make_converter(model, fmt, image_size, calibration_images=None, batch=1):
    """The configured TFLiteConverter of `model` for format `fmt` (also what TensorFlow's QuantizationDebugger
    takes, see benchmarks/int8_debug.py)."""
    if fmt not in ALL_FORMATS:
        raise ExportError(f"unknown format '{fmt}': choose from {', '.join(ALL_FORMATS)}.")
    function = _concrete_function(model, image_size, pin_input_range=fmt in FULL_INTEGER, batch=batch)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function], _weights_holder(model))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]  # never SELECT_TF_OPS (Flex)
    if fmt == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif fmt == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif fmt in FULL_INTEGER:
        if calibration_images is None or len(calibration_images) == 0:
            raise ExportError(f"the {fmt} format needs calibration images: the run's split has no training rows.")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.uint8
        converter.representative_dataset = lambda: (
            [image[None].astype(np.float32)] for image in calibration_images
        )
    return converter


def convert(model, fmt, image_size, calibration_images=None, batch=1, float_layers=(), float_ops=(),
            per_channel=True):
    """The .tflite bytes of `model` in format `fmt`; int8 needs `calibration_images` ((N, S, S, 3) uint8).
    `float_layers`: names of layers whose ops int8 keeps in float (the model's stem, see _selective_int8);
    `float_ops`: TFLite operator names (ADD, ...) int8 keeps in float besides SOFTMAX; `per_channel` False gives
    per-tensor weight scales (both measured in benchmarks/int8_fidelity.py).

    int8 is full-integer (TFLITE_BUILTINS_INT8) with uint8 input (scale 1, zero point 0: raw pixels) and uint8
    output (the softmax, scale 1/256). int8_qat converts the same way; `model` then holds the weights of the
    quantization-aware fine-tune (mineralnet.export.qat).
    `batch` None leaves the input's batch dimension free (LiteRT's resize_tensor_input then takes N crops at once).
    """
    converter = make_converter(model, fmt, image_size, calibration_images, batch)
    try:
        if fmt in FULL_INTEGER:
            model_bytes = _selective_int8(converter, float_layers, float_ops, per_channel)
        elif fmt == "dynamic":
            model_bytes = float_depthwise_filters(converter.convert())[0]
        else:
            model_bytes = converter.convert()
    except Exception as error:  # ConverterError and friends carry pages of MLIR; the first line says what
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ExportError(
            f"converting the model to {fmt} failed ({reason[:300]}): if that names operations without a TFLite "
            "builtin kernel, replace the layers using them (Flex ops are not allowed on edge devices)."
        ) from None
    check_no_flex(model_bytes, fmt)
    return model_bytes


def _selective_int8(converter, float_layers=(), float_ops=(), per_channel=True, output_type=None):
    """Full-integer conversion that leaves the ops named with FLOAT_MARKER (LayerNorm statistics, written so by
    mineralnet.export.rewrite) and SOFTMAX in float, and quantises everything else as `converter.convert()`
    would. XNNPACK runs those ops in float only: quantised, each would split the delegate.

    The ops of `float_layers` (tensor names containing a layer's name) and of the operator types `float_ops` stay
    float too; `output_type` tf.float32 leaves the output probabilities float (default uint8, the device contract).
    The export keeps the model's stem float: on the 64-px MINET-7 run of benchmarks/RESULTS.md, a float ConvNeXt
    stem lowered the mean |int8 - float32| probability error on the run's non-test rows from 0.0121 to 0.0099 at
    about 0.3 % of the MACs, and XNNPACK still runs the whole graph as one partition (it converts between int8
    and float).

    This is the converter's selective quantization: calibrate only, then quantize the calibrated model with a
    denylist of nodes, as tf.lite.experimental.QuantizationDebugger does. `mlir_quantize` is private TensorFlow
    API; tests/export/test_rewrite.py pins what this relies on (uint8 in/out, marked ops float)."""
    converter._experimental_calibrate_only = True
    return quantize_calibrated(converter, converter.convert(), float_layers, float_ops, per_channel, output_type)


def quantize_calibrated(converter, calibrated, float_layers=(), float_ops=(), per_channel=True, output_type=None):
    """The int8 bytes of `calibrated` (`converter`'s calibrate-only output), quantised as _selective_int8 says.
    Separate so benchmarks/int8_fidelity.py calibrates once and quantises many ways."""
    from tensorflow.lite.python import convert as tflite_convert  # private: see _selective_int8

    keep_float = sorted(name for name in tensor_names(calibrated)
                        if FLOAT_MARKER in name or any(layer in name for layer in float_layers))
    return tflite_convert.mlir_quantize(
        calibrated,
        disable_per_channel=converter._experimental_disable_per_channel or not per_channel,
        input_data_type=tf.uint8,
        output_data_type=output_type or tf.uint8,
        denylisted_nodes=keep_float,
        denylisted_ops=["SOFTMAX", *float_ops],
        disable_per_channel_for_dense_layers=(
            converter._experimental_disable_per_channel_quantization_for_dense_layers or not per_channel),
    )
