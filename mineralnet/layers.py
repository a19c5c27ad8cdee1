"""Keras layers of mineralnet, usable in any Keras 3 project (TF, JAX or torch backend)."""

import math

from mineralnet._tf import import_tensorflow

import_tensorflow()  # before Keras, which imports TensorFlow: its start-up noise stays hidden
import keras  # noqa: E402
from keras import ops  # noqa: E402


def eca_kernel_size(channels, gamma=2, b=1):
    """ECA-Net's adaptive kernel size: k = |(log2(C) + b) / gamma|, rounded to the nearest odd number above."""
    t = int(abs((math.log2(channels) + b) / gamma))
    return t if t % 2 else t + 1


@keras.saving.register_keras_serializable(package="mineralnet")
class ECA(keras.layers.Layer):
    """Efficient Channel Attention (Wang et al., CVPR 2020).

    Global average pooling over space, a bias-free 1-D convolution across the channel axis (local cross-channel
    interaction of width k), a sigmoid, then each input channel is rescaled by its weight. Adds only k weights.

    Args:
        kernel_size: odd width of the channel convolution; `None` picks ECA-Net's adaptive size from the
            channel count (see `eca_kernel_size`).
        gamma, b: the constants of the adaptive kernel-size rule.
    Input: (batch, height, width, channels), any spatial size. Output: same shape and dtype.
    """

    def __init__(self, kernel_size=None, gamma=2, b=1, **kwargs):
        super().__init__(**kwargs)
        if kernel_size is not None and (int(kernel_size) < 1 or int(kernel_size) % 2 == 0):
            raise ValueError(f"ECA kernel_size must be a positive odd integer, got {kernel_size!r}.")
        self.kernel_size = None if kernel_size is None else int(kernel_size)
        self.gamma = gamma
        self.b = b

    def build(self, input_shape):
        if len(input_shape) != 4 or input_shape[-1] is None:
            raise ValueError(f"ECA expects a 4-D channels-last input with a known channel count, got {input_shape}.")
        channels = int(input_shape[-1])
        self.k = self.kernel_size or eca_kernel_size(channels, self.gamma, self.b)
        # Conv1D kernel layout for keras.ops.conv: (width, in_channels=1, out_channels=1).
        self.kernel = self.add_weight(
            name="kernel", shape=(self.k, 1, 1), initializer="glorot_uniform", trainable=True
        )

    def call(self, inputs):
        # Pool and weigh in float32: a float16 mean over a 56x56 map loses precision and can overflow.
        pooled = ops.mean(ops.cast(inputs, "float32"), axis=(1, 2))  # (batch, channels)
        weights = ops.conv(
            ops.expand_dims(pooled, -1), ops.cast(self.kernel, "float32"), strides=1, padding="same"
        )  # (batch, channels, 1): the channel axis is the convolution's spatial axis
        # Reshapes, not `[:, :, 0]` / `[:, None, None, :]` indexing: the same values, but indexing becomes
        # STRIDED_SLICE in TFLite, which the XNNPACK delegate does not take, splitting the graph at every ECA.
        channels = ops.shape(inputs)[-1]
        weights = ops.sigmoid(ops.reshape(weights, (-1, channels)))
        return inputs * ops.cast(ops.reshape(weights, (-1, 1, 1, channels)), inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"kernel_size": self.kernel_size, "gamma": self.gamma, "b": self.b})
        return config
