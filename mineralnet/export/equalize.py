"""A LayerNorm's affine (gamma, beta) moved into the linear layer it feeds, two exact rewrites in float:
`fold_layernorm_affine` (every integer export) and `equalize` (SmoothQuant, measured, not the default).

Folding: x_hat * gamma + beta feeding y = x W + b is x_hat feeding y = x (gamma W) + (beta W + b), so the int8
file quantizes the normalized x_hat (every channel about the same range) and the LayerNorm has no int8 MUL or ADD
left. The converter does this itself for a LayerNorm feeding a FULLY_CONNECTED (ConvNeXt's pointwise layers at
batch 1), but not for one feeding a CONV_2D (the downsampling layers; with --batch dynamic the pointwise layers
too, written as 1x1 convolutions), where the int8 MUL and ADD stayed: the ADD of a beta near zero (a model early in
training: on the 2-epoch test run, beta scale 2.6e-5 against 0.03) is an int8 ADD whose inputs' scales differ by
more than 2^10, which XNNPACK refuses, splitting the delegate (3 extra partitions at batch 1, 21 with --batch
dynamic). Folding gamma too leaves the int8 graph of the pointwise layers as the converter made it at batch 1.
On three MINET-7 seeds the fold is neutral for fidelity (28 vs 29 of 570 val+calib rows disagreeing with Keras,
mean |int8 - float32| probability 0.0089 vs 0.0094) and for latency (benchmarks/RESULTS.md).

SmoothQuant-style equalization (Xiao et al. 2023; the LayerNorm -> linear case of Nagel et al. 2019's
cross-layer equalization):

Why (the hypothesis; measured, it holds only where the converter does not fold, see below): int8
quantizes the LayerNorm output (gamma * normalized + beta) with ONE scale for the whole tensor, so the
few channels with a large |gamma| set the step for all, and the small channels keep only a few levels. Dividing
gamma_c and beta_c by s_c and multiplying input row c of the next layer's kernel by s_c computes the same function
(the normalized value is per position, the next layer is linear in each input channel) while moving range from
the activations into the weights, which int8 quantizes per output channel. With s_c = max|X_c|^alpha /
max|W_c|^(1 - alpha) (X_c: channel c of the LayerNorm's output over the calibration images, W_c: input row c of
the kernel) alpha 0.5 gives activations and weights the same per-channel range.

The pairs (ConvNeXt): each block's LayerNorm -> pointwise Dense, each downsampling LayerNorm -> 2x2 Conv2D, the
head's LayerNorm -> (Dropout) -> classifier Dense. At batch 1 the converter folds the block pairs into their
FULLY_CONNECTED itself (read from the 2-epoch test run's int8 file), which makes their equalization a no-op in the
int8 file; the downsampling pairs (and the head's, if the converter leaves it) are what changes. Measured in
benchmarks/RESULTS.md ("int8 faithful to float32"): within 1-3 images of the export, not the default.
"""

from mineralnet._tf import import_tensorflow

import_tensorflow()  # first: its start-up lines stay hidden
import keras  # noqa: E402
import numpy as np  # noqa: E402

from mineralnet.export.rewrite import ExportDense, ExportLayerNorm  # noqa: E402

_NORMS = (ExportLayerNorm, keras.layers.LayerNormalization)
_PASS_THROUGH = (keras.layers.Dropout,)  # identity at inference


def _input_row_axis(layer):
    """The kernel axis of `layer`'s input channels, or None where the layer is not one whose input channels can
    absorb a per-channel scale (a Dense, or an ungrouped Conv2D, whose "valid" padding keeps zeros zero anyway)."""
    if type(layer) in (keras.layers.Dense, ExportDense):
        return 0
    if type(layer) is keras.layers.Conv2D and layer.groups == 1 and layer.data_format == "channels_last":
        return 2
    return None


def _producers(layer):
    """The layers whose outputs `layer` takes (its first call's inputs)."""
    tensors = keras.tree.flatten(layer._inbound_nodes[0].input_tensors) if layer._inbound_nodes else []
    return [tensor._keras_history[0] for tensor in tensors if getattr(tensor, "_keras_history", None)]


def equalization_pairs(model):
    """[(container, norm layer, linear layer)]: every LayerNorm (scale and centre on) whose only consumer, past
    Dropouts, is a Dense or Conv2D; in `model`'s own graph and one level of nested Sequential (ConvNeXt's stem and
    downsampling blocks). `container` is the model whose graph holds the norm's output."""
    pairs = []
    for container in [model] + [layer for layer in model.layers if isinstance(layer, keras.Sequential)]:
        consumers = {}
        for layer in container.layers:
            for producer in _producers(layer):
                consumers.setdefault(id(producer), []).append(layer)
        for layer in container.layers:
            if not isinstance(layer, _NORMS) or layer.gamma is None or layer.beta is None:
                continue
            following = consumers.get(id(layer), [])
            while len(following) == 1 and isinstance(following[0], _PASS_THROUGH):
                following = consumers.get(id(following[0]), [])
            if len(following) == 1 and _input_row_axis(following[0]) is not None:
                pairs.append((container, layer, following[0]))
    return pairs


def activation_ranges(model, pairs, images, batch_size=32):
    """{norm layer name: max |output| per channel over `images`} of each pair's LayerNorm."""
    top = [norm.output for container, norm, _ in pairs if container is model]
    nested = [(container, norm) for container, norm, _ in pairs if container is not model]
    entries = {id(container): container.input for container, _ in nested}
    probe = keras.Model(model.inputs, top + list(entries.values()))
    subs = {id(norm): keras.Model(container.inputs, norm.output) for container, norm in nested}
    ranges = {}
    for start in range(0, len(images), batch_size):
        outputs = probe(images[start:start + batch_size].astype(np.float32), training=False)
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        tops, inputs = outputs[:len(top)], dict(zip(entries, outputs[len(top):]))
        values = [(norm, out) for (_, norm, _), out in zip([p for p in pairs if p[0] is model], tops)]
        values += [(norm, subs[id(norm)](inputs[id(container)], training=False)) for container, norm in nested]
        for norm, out in values:
            peak = np.abs(keras.ops.convert_to_numpy(out)).reshape(-1, out.shape[-1]).max(0)
            ranges[norm.name] = np.maximum(ranges.get(norm.name, peak), peak)
    return ranges


def fold_layernorm_affine(model):
    """Fold every LayerNorm -> linear pair's gamma into the linear layer's kernel rows and its beta into the bias,
    IN PLACE (a rewrite_for_export clone, whose ExportLayerNorm then skips its MUL and ADD). A Conv2D takes beta
    only with "valid" padding (a "same" one would see beta where it pads zeros). Returns the pairs folded."""
    folded = 0
    for _, norm, linear in equalization_pairs(model):
        exact = type(linear) is not keras.layers.Conv2D or linear.padding == "valid"
        if not isinstance(norm, ExportLayerNorm) or not (norm.center and norm.scale) or not linear.use_bias \
                or not exact:
            continue
        gamma = keras.ops.convert_to_numpy(norm.gamma).astype(np.float64)
        beta = keras.ops.convert_to_numpy(norm.beta).astype(np.float64)
        axis = _input_row_axis(linear)
        rows = np.moveaxis(keras.ops.convert_to_numpy(linear.kernel).astype(np.float64), axis, 0)
        shift = np.tensordot(beta, rows, axes=(0, 0))  # (units,) or (kh, kw, filters)
        shift = shift.reshape(-1, shift.shape[-1]).sum(0)  # a valid convolution: every tap sees beta
        scaled = rows * gamma.reshape((-1,) + (1,) * (rows.ndim - 1))
        linear.kernel.assign(np.moveaxis(scaled, 0, axis).astype(np.float32))
        linear.bias.assign((keras.ops.convert_to_numpy(linear.bias) + shift).astype(np.float32))
        norm.gamma.assign(np.ones(gamma.shape, np.float32))
        norm.beta.assign(np.zeros(beta.shape, np.float32))
        norm.scale = norm.center = False
        folded += 1
    return folded


def equalize(model, images, alpha=0.5):
    """Equalize every LayerNorm -> linear pair of `model` IN PLACE (a rewrite_for_export clone, never the trained
    model), with SmoothQuant's s_c = max|X_c|^alpha / max|W_c|^(1 - alpha) measured on `images` ((N, S, S, 3)
    calibration images). Returns the number of pairs equalized. The function is unchanged up to float rounding."""
    pairs = equalization_pairs(model)
    if not pairs:
        return 0
    ranges = activation_ranges(model, pairs, images)
    for _, norm, linear in pairs:
        axis = _input_row_axis(linear)
        kernel = keras.ops.convert_to_numpy(linear.kernel)
        weight_range = np.abs(np.moveaxis(kernel, axis, 0)).reshape(kernel.shape[axis], -1).max(1)
        activation_range = ranges[norm.name]
        usable = (weight_range > 0) & (activation_range > 0)
        scale = np.ones_like(activation_range)
        scale[usable] = activation_range[usable] ** alpha / weight_range[usable] ** (1.0 - alpha)
        scale = np.clip(scale, 1e-4, 1e4).astype(np.float32)
        norm.gamma.assign(keras.ops.convert_to_numpy(norm.gamma) / scale)
        norm.beta.assign(keras.ops.convert_to_numpy(norm.beta) / scale)
        shape = [1] * kernel.ndim
        shape[axis] = -1
        linear.kernel.assign(kernel * scale.reshape(shape))
    return len(pairs)
