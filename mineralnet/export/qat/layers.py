"""tf_keras versions of the Keras 3 layers of the ConvNeXt models that tf_keras lacks (LayerScale, ECA) or that
tfmot cannot wrap (the Normalization inside the stem), computing exactly what the Keras 3 layers compute so the
copied weights give the same probabilities. Imported only inside the QAT child process (see __main__.py)."""

import tensorflow as tf
import tf_keras

from mineralnet.export.rewrite import gelu_sigmoid


class Standardize(tf_keras.layers.Layer):
    """(x - mean) / max(sqrt(variance), eps) per channel with constant statistics: Keras 3's non-adapted
    `Normalization`, the ImageNet normalisation the model applies to raw 0-255 pixels."""

    def __init__(self, mean, variance, epsilon=1e-7, **kwargs):
        super().__init__(**kwargs)
        self.mean = [float(m) for m in mean]
        self.variance = [float(v) for v in variance]
        self.epsilon = float(epsilon)

    def call(self, inputs):
        std = tf.maximum(tf.sqrt(tf.constant(self.variance, inputs.dtype)), self.epsilon)
        return (inputs - tf.constant(self.mean, inputs.dtype)) / std

    def get_config(self):
        return {**super().get_config(), "mean": self.mean, "variance": self.variance, "epsilon": self.epsilon}


class LayerScale(tf_keras.layers.Layer):
    """x * gamma with one learned scale per channel (keras.applications' ConvNeXt LayerScale)."""

    def __init__(self, projection_dim, **kwargs):
        super().__init__(**kwargs)
        self.projection_dim = int(projection_dim)

    def build(self, input_shape):
        self.gamma = self.add_weight(name="gamma", shape=(self.projection_dim,), initializer="ones")
        super().build(input_shape)

    def call(self, inputs):
        return inputs * self.gamma

    def get_config(self):
        return {**super().get_config(), "projection_dim": self.projection_dim}


class ECA(tf_keras.layers.Layer):
    """mineralnet.layers.ECA: spatial mean, a bias-free 1-D convolution of width k across channels, a sigmoid,
    then each channel rescaled. The kernel keeps the Keras 3 layout (k, 1, 1) so it copies unchanged."""

    def __init__(self, kernel_width, **kwargs):
        super().__init__(**kwargs)
        self.kernel_width = int(kernel_width)

    def build(self, input_shape):
        self.kernel = self.add_weight(name="kernel", shape=(self.kernel_width, 1, 1), initializer="glorot_uniform")
        super().build(input_shape)

    def call(self, inputs):
        pooled = tf.reduce_mean(inputs, axis=[1, 2])  # (batch, channels)
        weights = tf.nn.conv1d(pooled[:, :, None], self.kernel, stride=1, padding="SAME")[:, :, 0]
        return inputs * tf.sigmoid(weights)[:, None, None, :]

    def get_config(self):
        return {**super().get_config(), "kernel_width": self.kernel_width}


class GeluSigmoid(tf_keras.layers.Layer):
    """GELU in the form the int8 formats ship (mineralnet.export.rewrite.gelu_sigmoid), so QAT trains it."""

    def call(self, inputs):
        return gelu_sigmoid(inputs)


CUSTOM_OBJECTS = {"Standardize": Standardize, "LayerScale": LayerScale, "ECA": ECA, "GeluSigmoid": GeluSigmoid}
