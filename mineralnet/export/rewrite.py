"""Export-time graph rewrites: the trained model re-expressed, layer by layer, in operations the XNNPACK delegate
of the LiteRT interpreter runs fast and in one partition. Applied to a clone, never to the saved model.keras.

Exact (every format; the same function up to float rounding, tests/export/test_rewrite.py):
- a depthwise convolution of more than 25 taps (ConvNeXt's 7x7) becomes row slabs of at most 25 taps on one
  padded input, summed: XNNPACK has single-pass depthwise kernels only up to 25 taps, larger ones take a slow
  generic path (7x7 depthwise: 2.4 % of ConvNeXt-T's MACs, ~35 % of its float32 time);
- LayerNormalization is written out with its statistics (variance, + epsilon, rsqrt, the normalising multiply)
  as named ops, so the int8 conversion can keep exactly those in float (`FLOAT_MARKER`): XNNPACK runs int8
  RSQRT / SQUARED_DIFFERENCE nowhere and refuses int8 `var + eps` (eps is < 1/1024 of the output scale).

- resnet50/vgg19's CaffePreprocessing (RGB->BGR flip, mean subtraction) becomes a 1x1 convolution: int8
  REVERSE_V2 is not delegated.

Free batch only (`free_batch=True`, the opt-in `--batch dynamic` export; batch-1 files keep their graph): with a
batch of None the converter keeps every shape computation the batch reaches as SHAPE/GATHER/PACK ops, which XNNPACK
does not take (measured on ECA-ConvNeXt-T: 92 partitions, float32 batch-1 latency doubled). So
- a Dense on a feature map (ConvNeXt's pointwise convolutions: TensorFlow's tensordot builds its reshape from the
  dynamic shape) becomes the 1x1 convolution it is (its bias and LayerScale fold into it as into the batch-1 FC);
- ECA's channel convolution is written as a 2-D convolution over a (-1, 1, C, 1) reshape: EXPAND_DIMS (what conv1d
  and expand_dims become with a free batch) is not delegated either;
- the depthwise slabs are strided slices with the batch masked (a SLICE of size -1 is not delegated);
- Flatten (simple_cnn's head) becomes a reshape to (-1, size), its size a constant.

Approximate (integer formats only): GELU, which XNNPACK runs in float only, becomes x * sigmoid(1.702 x), built
from int8 MUL and LOGISTIC (`GELU_APPROXIMATIONS`; the choice was measured, see docs/export.md).
"""

from mineralnet._tf import import_tensorflow

import_tensorflow()  # first: its start-up lines stay hidden (importing mineralnet.export no longer starts it)
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

MAX_DEPTHWISE_TAPS = 25
FLOAT_MARKER = "keep_float"  # op-name fragment of the LayerNorm statistics the int8 conversion leaves in float


class SplitDepthwiseConv2D(keras.layers.Layer):
    """Stride-1 depthwise convolution (depth multiplier 1, "same" or "valid"), computed as row slabs of at most
    `max_taps` taps each: pad once, slice the rows each slab needs (a SLICE XNNPACK delegates), a VALID depthwise
    convolution per slab, summed, the bias added to the first. Weights: kernel (kh, kw, C, 1), bias (C,)."""

    def __init__(self, kernel_size, padding="same", use_bias=True, max_taps=MAX_DEPTHWISE_TAPS, **kwargs):
        super().__init__(**kwargs)
        self.kernel_size = tuple(int(k) for k in kernel_size)
        self.padding = padding
        self.use_bias = use_bias
        self.max_taps = int(max_taps)

    def build(self, input_shape):
        channels = int(input_shape[-1])
        self.kernel = self.add_weight(name="kernel", shape=self.kernel_size + (channels, 1), initializer="zeros")
        self.bias = self.add_weight(name="bias", shape=(channels,), initializer="zeros") if self.use_bias else None

    def slabs(self, kh, kw):
        """(first row, rows) of each slab of a kh x kw kernel: as many rows per slab as fit in max_taps."""
        rows = max(1, self.max_taps // kw)
        return [(start, min(rows, kh - start)) for start in range(0, kh, rows)]

    @staticmethod
    def _reach(size, taps):
        """Kernel offsets of a "same" convolution along an axis of static length `size` that ever meet real
        (non-padding) input: (first, last, padding before). A small feature map (2x2 at 64 px, stage 4) under a
        7x7 kernel would otherwise give slabs that see only padding, constant-zero outputs whose int8
        requantisation scale XNNPACK rejects; dropping those taps is exact."""
        before = (taps - 1) // 2
        if size is None:
            return 0, taps - 1, before
        first, last = max(0, before - size + 1), min(taps - 1, before + size - 1)
        return first, last, before - first

    def call(self, inputs):
        kh, kw = self.kernel_size
        kernel = self.kernel
        if self.padding == "same":
            r0, r1, top = self._reach(inputs.shape[1], kh)
            c0, c1, left = self._reach(inputs.shape[2], kw)
            kernel = kernel[r0:r1 + 1, c0:c1 + 1]
            kh, kw = r1 - r0 + 1, c1 - c0 + 1
            inputs = tf.pad(inputs, [[0, 0], [top, kh - 1 - top], [left, kw - 1 - left], [0, 0]])
        # Static sizes where the shape is known (always at export, where batch and image size are fixed): XNNPACK
        # delegates a SLICE only when its begin and size are constants.
        # A free batch alone is sliced whole with size -1, which keeps begin and size constant.
        shape = [-1 if inputs.shape[0] is None else inputs.shape[0]]
        shape += [inputs.shape[i] if inputs.shape[i] is not None else tf.shape(inputs)[i] for i in range(1, 4)]
        height = shape[1] - kh + 1  # output rows of the full VALID convolution
        total = None
        for start, rows in self.slabs(kh, kw):
            piece = inputs
            if rows < kh:
                size = [shape[0], height + rows - 1, shape[2], shape[3]]
                if size[0] == -1 and not any(tf.is_tensor(v) for v in size[1:]):
                    piece = tf.strided_slice(inputs, [0, start, 0, 0], [0, start + size[1], size[2], size[3]],
                                             begin_mask=1, end_mask=1)
                else:
                    dynamic = any(tf.is_tensor(v) for v in size)
                    piece = tf.slice(inputs, [0, start, 0, 0], tf.stack(size) if dynamic else size)
            out = tf.nn.depthwise_conv2d(piece, kernel[start:start + rows], [1, 1, 1, 1], "VALID")
            if total is None and self.bias is not None:
                out = tf.nn.bias_add(out, self.bias)
            total = out if total is None else total + out
        return total

    def compute_output_shape(self, input_shape):
        if self.padding == "same":
            return input_shape
        kh, kw = self.kernel_size
        height, width = input_shape[1:3]
        return (input_shape[0], None if height is None else height - kh + 1,
                None if width is None else width - kw + 1, input_shape[3])


class ExportLayerNorm(keras.layers.Layer):
    """LayerNormalization over the last axis, with the statistics as named ops (`FLOAT_MARKER`): mean, centre,
    variance = mean(centred^2), rsqrt(variance + epsilon), centred * rsqrt, then gamma and beta. In int8 files
    the marked ops (all but gamma and beta) stay float: XNNPACK refuses int8 `x - mean` whenever the mean's
    range is < 1/1024 of the output's, and a per-position rsqrt quantised to 8 bits over the whole tensor
    would lose the small-variance positions."""

    def __init__(self, epsilon, center=True, scale=True, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = float(epsilon)
        self.center = center
        self.scale = scale

    def build(self, input_shape):
        channels = (int(input_shape[-1]),)
        self.gamma = self.add_weight(name="gamma", shape=channels, initializer="ones") if self.scale else None
        self.beta = self.add_weight(name="beta", shape=channels, initializer="zeros") if self.center else None

    def call(self, inputs):
        mean = tf.reduce_mean(inputs, axis=-1, keepdims=True, name=f"{FLOAT_MARKER}_mean")
        centred = tf.math.subtract(inputs, mean, name=f"{FLOAT_MARKER}_centre")
        square = tf.math.square(centred, name=f"{FLOAT_MARKER}_square")
        variance = tf.reduce_mean(square, axis=-1, keepdims=True, name=f"{FLOAT_MARKER}_variance")
        shifted = tf.math.add(variance, self.epsilon, name=f"{FLOAT_MARKER}_add_epsilon")
        inverse = tf.math.rsqrt(shifted, name=f"{FLOAT_MARKER}_rsqrt")
        outputs = tf.math.multiply(centred, inverse, name=f"{FLOAT_MARKER}_normalise")
        if self.gamma is not None and self.scale:  # scale/center False: folded into the next layer (equalize.py)
            outputs = outputs * self.gamma
        if self.beta is not None and self.center:
            outputs = outputs + self.beta
        return outputs

    def compute_output_shape(self, input_shape):
        return input_shape


class ExportDense(keras.layers.Layer):
    """keras Dense as a plain matmul on (batch, C), a 1x1 convolution on a feature map, else with constant-shaped
    reshapes around the matmul where the sizes are known, so a free batch adds no shape arithmetic (see the module docstring). Weights: kernel
    (C, units), bias (units,), as Dense's."""

    def __init__(self, units, activation=None, use_bias=True, **kwargs):
        super().__init__(**kwargs)
        self.units = int(units)
        self.activation = keras.activations.get(activation)
        self.use_bias = use_bias

    def build(self, input_shape):
        channels = int(input_shape[-1])
        self.kernel = self.add_weight(name="kernel", shape=(channels, self.units), initializer="zeros")
        self.bias = self.add_weight(name="bias", shape=(self.units,), initializer="zeros") if self.use_bias else None

    def call(self, inputs):
        middle = inputs.shape[1:-1]
        if len(inputs.shape) == 2:
            outputs = tf.matmul(inputs, self.kernel)
        elif len(inputs.shape) == 4:  # a 1x1 convolution: the bias and a following constant scale fold into it
            outputs = tf.nn.conv2d(inputs, tf.reshape(self.kernel, [1, 1, *self.kernel.shape]), 1, "VALID")
        elif all(size is not None for size in middle):
            flat = tf.reshape(inputs, [-1, inputs.shape[-1]])
            outputs = tf.reshape(tf.matmul(flat, self.kernel), [-1, *middle, self.units])
        else:
            outputs = tf.tensordot(inputs, self.kernel, [[len(inputs.shape) - 1], [0]])
        if self.bias is not None:
            outputs = outputs + self.bias
        return self.activation(outputs)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)


class ExportECA(keras.layers.Layer):
    """mineralnet.layers.ECA with its channel convolution as a 2-D convolution over a (-1, 1, C, 1) reshape and
    constant-shaped reshapes (see the module docstring); the same function. Weight: kernel (k, 1, 1), as ECA's."""

    def __init__(self, kernel_size, **kwargs):
        super().__init__(**kwargs)
        self.kernel_size = int(kernel_size)

    def build(self, input_shape):
        self.kernel = self.add_weight(name="kernel", shape=(self.kernel_size, 1, 1), initializer="zeros")

    def call(self, inputs):
        channels = inputs.shape[-1]
        pooled = tf.reduce_mean(tf.cast(inputs, tf.float32), axis=(1, 2))
        row = tf.reshape(pooled, [-1, 1, channels, 1])
        weights = tf.nn.conv2d(row, tf.reshape(tf.cast(self.kernel, tf.float32), [1, self.kernel_size, 1, 1]),
                               [1, 1, 1, 1], "SAME")
        weights = tf.math.sigmoid(tf.reshape(weights, [-1, 1, 1, channels]))
        return inputs * tf.cast(weights, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape


class ExportFlatten(keras.layers.Layer):
    """keras Flatten as one reshape to (-1, product of the other sizes), so a free batch needs no shape arithmetic."""

    def call(self, inputs):
        return tf.reshape(inputs, [-1, int(np.prod(inputs.shape[1:]))])

    def compute_output_shape(self, input_shape):
        return (input_shape[0], int(np.prod(input_shape[1:])))


def gelu_sigmoid(x):
    """x * sigmoid(1.702 x) (Hendrycks and Gimpel 2016): max abs error 0.02 against the exact GELU."""
    return x * tf.math.sigmoid(1.702 * x)


def gelu_tanh(x):
    """The tanh form: max abs error 5e-4, but more ops (15 % slower int8 in the issue's measurement)."""
    return 0.5 * x * (1.0 + tf.math.tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)))


GELU_APPROXIMATIONS = {"sigmoid": gelu_sigmoid, "tanh": gelu_tanh}
INTEGER_GELU = "sigmoid"  # measured on the MINET-7 run, benchmarks/RESULTS.md


class ApproximateGelu(keras.layers.Layer):
    def __init__(self, form=INTEGER_GELU, **kwargs):
        super().__init__(**kwargs)
        self.form = form

    def call(self, inputs):
        return GELU_APPROXIMATIONS[self.form](inputs)

    def compute_output_shape(self, input_shape):
        return input_shape


def _is_long_depthwise(layer):
    """A Conv2D with one input channel per group and one filter per group, over more than 25 taps, stride 1."""
    if type(layer) is not keras.layers.Conv2D or layer.data_format != "channels_last" or not layer.built:
        return False
    kh, kw, per_group, _ = layer.kernel.shape
    return (per_group == 1 and layer.groups == layer.filters and kh * kw > MAX_DEPTHWISE_TAPS
            and tuple(layer.strides) == (1, 1) and tuple(layer.dilation_rate) == (1, 1)
            and layer.padding in ("same", "valid") and layer.activation in (None, keras.activations.linear))


def _is_last_axis_layernorm(layer):
    return (type(layer) is keras.layers.LayerNormalization and not layer.rms_scaling
            and layer.axis in (-1, [-1], (-1,)))


def _is_exact_gelu(layer):
    return type(layer) is keras.layers.Activation and getattr(layer.activation, "__name__", "") == "gelu"


def _replacement(layer, gelu, free_batch=False):
    """(new layer built to the old one's weight shapes, function old weights -> new weights), or None."""
    if free_batch and type(layer) is keras.layers.Dense and layer.built:
        new = ExportDense(layer.units, layer.activation, layer.use_bias, name=layer.name)
        new.build((None, layer.kernel.shape[0]))
        return new, list
    if free_batch and type(layer) is keras.layers.Flatten and layer.data_format == "channels_last":
        return ExportFlatten(name=layer.name), list
    if free_batch and type(layer).__name__ == "ECA" and type(layer).__module__ == "mineralnet.layers":
        new = ExportECA(layer.kernel.shape[0], name=layer.name)
        new.build(None)
        return new, list
    if _is_long_depthwise(layer):
        new = SplitDepthwiseConv2D(layer.kernel_size, layer.padding, layer.use_bias, name=layer.name)
        new.build((None, None, None, layer.filters))
        # Conv2D with groups=C keeps its kernel as (kh, kw, 1, C); a depthwise kernel is (kh, kw, C, 1).
        return new, lambda weights: [np.transpose(weights[0], (0, 1, 3, 2))] + weights[1:]
    if _is_last_axis_layernorm(layer):
        new = ExportLayerNorm(layer.epsilon, layer.center, layer.scale, name=layer.name)
        new.build((None, (layer.gamma if layer.scale else layer.beta).shape[0]))
        return new, list
    if gelu and _is_exact_gelu(layer):
        return ApproximateGelu(gelu, name=layer.name), list
    if type(layer).__name__ == "CaffePreprocessing":
        # RGB->BGR flip and mean subtraction as a 1x1 convolution (a permutation kernel of ones, the negated
        # means as bias): exact, and XNNPACK delegates it, where int8 REVERSE_V2 stays outside.
        new = keras.layers.Conv2D(3, 1, name=layer.name)
        new.build((None, None, None, 3))
        kernel = np.eye(3, dtype=np.float32)[::-1].reshape(1, 1, 3, 3)
        from mineralnet.models.applications import CAFFE_BGR_MEAN
        return new, lambda weights: [kernel, -np.asarray(CAFFE_BGR_MEAN, np.float32)]
    return None


def _leaves(model):
    """The weight-owning leaf layers of `model`, nested Sequential/functional models flattened, in order."""
    out = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            out.extend(_leaves(layer))
        elif not isinstance(layer, keras.layers.InputLayer):  # a clone's inputs get fresh names
            out.append(layer)
    return out


def rewrite_for_export(model, gelu=None, free_batch=False, weights=None):
    """A clone of functional/Sequential `model` with the rewrites above (`gelu`: None keeps GELU exact, else a
    key of GELU_APPROXIMATIONS), its weights copied; `model` itself is untouched. Nested Sequential models
    (ConvNeXt's stem and downsampling blocks) are rewritten too. Returns (clone, {rewritten layer type: count});
    a subclassed model, which has no graph to rewrite, comes back as it is with no counts.

    `weights` ({leaf layer name: weights in `model`'s layout}, every weight-owning layer) replaces the weights
    of `model` in the clone: a fine-tune's result (int8_qat, the pruned model: mineralnet.export.qat).

    free_batch=True adds the rewrites for a file whose batch dimension is free (module docstring)."""
    if gelu is not None and gelu not in GELU_APPROXIMATIONS:
        raise ValueError(f"unknown GELU approximation '{gelu}': choose from {', '.join(GELU_APPROXIMATIONS)}.")
    if not isinstance(model, keras.Sequential) and not getattr(model, "_is_graph_network", False) \
            and type(model) is not keras.Model and not isinstance(model, keras.src.models.Functional):
        return model, {}
    converters = {}

    def clone(layer):
        plan = _replacement(layer, gelu, free_batch)
        if plan is None:
            return layer.__class__.from_config(layer.get_config())
        converters[id(plan[0])] = plan[1]
        return plan[0]

    cloned = keras.models.clone_model(model, clone_function=clone, recursive=True)
    sources, targets = _leaves(model), _leaves(cloned)
    if [layer.name for layer in sources] != [layer.name for layer in targets]:
        raise RuntimeError(f"rewriting '{model.name}' changed its layer order; export it without rewrites.")
    if weights is not None:
        owners = {layer.name for layer in sources if layer.weights}
        if set(weights) != owners:
            raise ValueError(f"the weights given for '{model.name}' do not match its layers: missing "
                             f"{sorted(owners - set(weights))[:3]}, unknown {sorted(set(weights) - owners)[:3]}.")
    counts = {}
    for source, target in zip(sources, targets):
        convert_weights = converters.get(id(target))
        if convert_weights is not None:
            kind = type(target).__name__
            counts[kind] = counts.get(kind, 0) + 1
        values = source.get_weights() if weights is None or not source.weights else list(weights[source.name])
        target.set_weights((convert_weights or list)(values))
    return cloned, counts
