"""Make the tf_keras twin quantization-aware with tfmot's default 8-bit scheme.

Conv2D, DepthwiseConv2D, Dense, Add and GlobalAveragePooling2D get tfmot's own configs (per-channel 8-bit
convolution kernels, per-tensor Dense kernels, 8-bit outputs). tfmot has none for LayerNormalization,
LayerScale, ECA, the sigmoid-form GELU and the input standardisation, so they get `OutputQuantizeConfig`: their
weights and inner arithmetic stay float during training and only their output is fake-quantised to 8 bits,
as the int8 TFLite model stores it (the int8 export keeps LayerNorm's statistics in float and calibrates the
rest inside them). The stem's convolution is left float (`float_layers`), as the int8 export keeps it.
"""

import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras

from mineralnet.export.errors import ExportError
from mineralnet.export.qat.layers import CUSTOM_OBJECTS, ECA, GeluSigmoid, LayerScale, Standardize

quantize_keras = tfmot.quantization.keras
PIXEL_RANGE = (0.0, 255.0)  # the uint8 input takes raw pixels: scale 1, zero point 0


class OutputQuantizeConfig(quantize_keras.QuantizeConfig):
    """Fake-quantise only the layer's output (8 bits, asymmetric, per tensor)."""

    def get_weights_and_quantizers(self, layer):
        return []

    def get_activations_and_quantizers(self, layer):
        return []

    def set_quantize_weights(self, layer, quantize_weights):
        pass

    def set_quantize_activations(self, layer, quantize_activations):
        pass

    def get_output_quantizers(self, layer):
        return [quantize_keras.quantizers.MovingAverageQuantizer(
            num_bits=8, per_axis=False, symmetric=False, narrow_range=False)]

    def get_config(self):
        return {}


OUTPUT_ONLY = (tf_keras.layers.LayerNormalization, LayerScale, ECA, GeluSigmoid, Standardize)


def quantize_scope():
    return quantize_keras.quantize_scope({**CUSTOM_OBJECTS, "OutputQuantizeConfig": OutputQuantizeConfig})


def quantize_twin(twin, float_layers=()):
    """The quantization-aware copy of `twin` (its weights copied; `twin` itself is left as it is); the layers
    named in `float_layers` stay float (not annotated)."""

    def annotate(layer):
        if layer.name in float_layers:
            return layer  # shared, as the annotations wrap the layer itself: quantize_apply copies its weights
        if isinstance(layer, OUTPUT_ONLY):
            return quantize_keras.quantize_annotate_layer(layer, OutputQuantizeConfig())
        return quantize_keras.quantize_annotate_layer(layer)  # tfmot's default 8-bit config for the layer type

    with quantize_scope():
        annotated = tf_keras.models.clone_model(twin, clone_function=annotate)
        return quantize_keras.quantize_apply(annotated)


def trained_weights(quantized, twin):
    """{layer name: float weights} of every weight-owning layer of the float `twin`, as the quantization-aware
    model `quantized` (made from it) holds them after training, inside its quantize wrappers. The activation
    ranges the wrappers learned are left out: the exporter quantizes these weights with the int8 path, which
    calibrates the activation ranges again (this QAT starts its ranges from that same calibration)."""
    # A wrapper's kernel is no longer among its inner layer's weights (tfmot swaps in the fake-quantised tensor),
    # but still among the wrapper's, under the inner layer's name: "dw/depthwise_kernel:0".
    variables = {variable.name: variable for layer in quantized.layers for variable in layer.weights}
    return {layer.name: [variables[weight.name].numpy() for weight in layer.weights]
            for layer in twin.layers if layer.weights}


def check_weights_carried(quantized, twin):
    """ExportError unless the quantization-aware model starts from exactly the twin's weights (a layer tfmot
    rebuilt instead of copying would start random and train from there)."""
    for name, values in trained_weights(quantized, twin).items():
        if not all(np.array_equal(value, weight) for value, weight in zip(values, twin.get_layer(name).get_weights())):
            raise ExportError(f"the quantization-aware model does not start from the weights of layer '{name}': "
                              "fix mineralnet/export/qat/quantize.py.")


def _range_variables(layer):
    """{kind: (min, max)} of a quantize wrapper's activation quantizers: kind is "pre_activation" (the logits
    before the classifier's softmax) or the output ("output", "post_activation"). Kernel ranges are left out:
    tfmot recomputes them from the weights at every step."""
    variables = {v.name.split("/")[-1].split(":")[0]: v for v in layer.weights}
    return {name[:-4]: (variable, variables[name[:-4] + "_max"]) for name, variable in variables.items()
            if name.endswith("_min") and "kernel" not in name}


def calibrate_ranges(quantized, twin, images, batch_size=16):
    """Start every activation range of `quantized` at the float twin's range on `images` (uint8 pixels).

    tfmot starts each range at [-6, 6] and moves it by an exponential moving average with decay 0.999, so a
    fine-tune of a few hundred steps would still clip the residual sums (often |x| > 50) at 6 and export
    that clipping into the int8 model. Seeding the ranges with what the float model really produces (0
    included, as TFLite needs) lets a short QAT start where post-training int8 starts.
    """
    targets = [layer for layer in quantized.layers
               if isinstance(layer, quantize_keras.QuantizeWrapperV2) and _range_variables(layer)]
    floats = [twin.get_layer(layer.layer.name) for layer in targets]
    probe = tf_keras.Model(twin.input, [(layer.input, layer.output) for layer in floats])

    @tf.function
    def extremes(batch):
        rows = []
        for layer, (inputs, outputs) in zip(floats, probe(batch, training=False)):
            logits = outputs
            if isinstance(layer, tf_keras.layers.Dense) and layer.activation is not tf_keras.activations.linear:
                # The classifier's fake quant sits on its logits, before the softmax.
                logits = tf.tensordot(inputs, layer.kernel, 1) + layer.bias
            rows.append(tf.stack([tf.reduce_min(outputs), tf.reduce_max(outputs),
                                  tf.reduce_min(logits), tf.reduce_max(logits)]))
        return tf.stack(rows)

    low, high = np.full((len(targets), 2), np.inf), np.full((len(targets), 2), -np.inf)
    for start in range(0, len(images), batch_size):
        stats = extremes(tf.constant(images[start:start + batch_size], tf.float32)).numpy()
        low, high = np.minimum(low, stats[:, 0::2]), np.maximum(high, stats[:, 1::2])
    for index, layer in enumerate(targets):
        for kind, (min_var, max_var) in _range_variables(layer).items():
            column = 1 if kind == "pre_activation" else 0
            min_var.assign(np.full(min_var.shape, min(low[index, column], 0.0), np.float32))
            max_var.assign(np.full(max_var.shape, max(high[index, column], 0.0), np.float32))
    refresh_weight_ranges(quantized, images[:1])


def refresh_weight_ranges(quantized, images):
    """Record the current kernel ranges and pin the input range; called before training.

    tfmot's kernel quantizers store a kernel's min/max only in a training-mode call; inference uses the stored
    values, which start at [-6, 6]. One training-mode call on `images` stores them (it moves each activation
    range's moving average by 0.1 % towards that batch, which is negligible). The input QuantizeLayer keeps the
    min/max of every pixel seen: pin it to 0-255, the range of the uint8 input the exported file takes (scale 1,
    zero point 0), whatever the first batch held.
    """
    quantized(tf.constant(images, tf.float32), training=True)
    (layer,) = [layer for layer in quantized.layers if type(layer).__name__ == "QuantizeLayer"]
    for min_var, max_var in _range_variables(layer).values():
        min_var.assign(PIXEL_RANGE[0])
        max_var.assign(PIXEL_RANGE[1])
