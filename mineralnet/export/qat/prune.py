"""Magnitude pruning of the tf_keras twin with tfmot: prune_low_magnitude on every Conv2D and Dense layer (not
the classifier: few weights, all of them needed; not the 7x7 depthwise convolutions: tfmot's registry prunes
no depthwise kernel, and they hold about 1 % of ConvNeXt-Tiny's weights), a PolynomialDecay schedule that
reaches the target sparsity on the last fine-tuning step, then strip_pruning, which leaves a plain model with
zeros in its kernels.

The zeros make the file compress (gzip) but not run faster; SPEED_NOTE says why, and the report quotes it.
"""

import numpy as np
import tensorflow_model_optimization as tfmot
import tf_keras

sparsity_api = tfmot.sparsity.keras
PRUNABLE = (tf_keras.layers.Conv2D, tf_keras.layers.Dense)
MASK_UPDATES = 20
SPEED_NOTE = (
    "no speed-up expected: LiteRT's XNNPACK delegate uses sparse kernels only for float subgraphs that start with "
    "a 3x3 stride-2 CONV_2D and hold only 1x1 CONV_2D, 3x3/5x5 depthwise and elementwise ops, with weights stored "
    "sparse; ConvNeXt (4x4 stride-4 stem, 7x7 depthwise, LayerNorm, FULLY_CONNECTED pointwise layers) has none "
    "of that, so the zeros are multiplied like any other weight. Pruning buys a smaller download (gzip) only."
)  # how many times the masks grow towards the target over the fine-tune


def schedule(sparsity, total_steps):
    """PolynomialDecay from 0 to `sparsity` whose last mask update falls on the last step of `total_steps`
    (tfmot updates masks at begin_step + k * frequency, up to end_step)."""
    end_step = max(int(total_steps) - 1, 0)
    frequency = max(1, end_step // MASK_UPDATES)
    return sparsity_api.PolynomialDecay(initial_sparsity=0.0, final_sparsity=float(sparsity),
                                        begin_step=end_step % frequency, end_step=end_step, frequency=frequency)


def prunable(layer, classifier):
    """Whether `layer` is pruned; `classifier`: the name of the model's classifier layer (its registry entry's
    ModelInfo.classifier, which the twin keeps), left whole."""
    return (isinstance(layer, PRUNABLE) and not isinstance(layer, tf_keras.layers.DepthwiseConv2D)
            and layer.name != classifier)


def prune_model(twin, sparsity, total_steps, classifier):
    """A copy of `twin` (weights copied) with its prunable layers wrapped by prune_low_magnitude."""
    copy = tf_keras.models.clone_model(twin)
    copy.set_weights(twin.get_weights())
    pruning_schedule = schedule(sparsity, total_steps)
    return tf_keras.models.clone_model(copy, clone_function=lambda layer: sparsity_api.prune_low_magnitude(
        layer, pruning_schedule=pruning_schedule) if prunable(layer, classifier) else layer)


def callbacks():
    """The callback fit() needs to advance the pruning step."""
    return [sparsity_api.UpdatePruningStep()]


def strip(pruned):
    return sparsity_api.strip_pruning(pruned)


def zero_fractions(model, classifier):
    """{layer name: fraction of exactly-zero kernel weights} over the prunable layers of a stripped model."""
    fractions = {}
    for layer in model.layers:
        if prunable(layer, classifier):
            kernel = layer.get_weights()[0]
            fractions[layer.name] = float(np.mean(kernel == 0))
    return fractions
