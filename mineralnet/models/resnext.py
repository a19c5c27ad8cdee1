"""ResNeXt50 32x4d (Xie et al. 2017, "Aggregated residual transformations"), which Keras lacks, built as
torchvision's resnext50_32x4d: bottleneck blocks [3, 4, 6, 3] whose 3x3 convolution has 32 groups of width 4
in the first stage (128 channels, doubling per stage), stride on that 3x3 convolution, a projection shortcut on
each stage's first block. 25,028,904 trainable parameters at 1000 classes, as torchvision's.
"""


import keras

from mineralnet.models.head import FEATURE_LAYER, classifier_head
from mineralnet.models.registry import register

GROUPS, WIDTH_PER_GROUP = 32, 4
STAGES = ((64, 3), (128, 4), (256, 6), (512, 3))  # (planes, blocks); a block outputs 4 x planes channels
EXPANSION = 4


@keras.saving.register_keras_serializable(package="mineralnet")
class GroupedConv2D(keras.layers.Conv2D):
    """Conv2D that runs its grouped convolution on TensorFlow's own kernel. Keras sends every grouped convolution
    on the TensorFlow backend through an XLA-compiled function (once needed on CPU); XLA's CPU grouped convolution
    is ~1000x slower than TensorFlow's (forward + backward of ResNeXt's first-stage 3x3 on 16 images at 96 px:
    13 s vs 0.013 s, same results), which made one ResNeXt50 training step take a minute. Other backends keep
    Keras' own path."""

    def convolution_op(self, inputs, kernel):
        if keras.backend.backend() != "tensorflow":
            return super().convolution_op(inputs, kernel)
        import tensorflow as tf

        return tf.nn.convolution(inputs, kernel, self.strides, self.padding.upper(), dilations=self.dilation_rate,
                                 data_format="NHWC" if self.data_format == "channels_last" else "NCHW")


def conv_bn(x, filters, kernel, name, strides=1, groups=1, relu=True):
    """Convolution without bias, BatchNorm (torchvision's eps), optionally ReLU."""
    conv = GroupedConv2D if groups > 1 else keras.layers.Conv2D
    x = conv(filters, kernel, strides, padding="same", groups=groups, use_bias=False, name=f"{name}_conv")(x)
    x = keras.layers.BatchNormalization(epsilon=1e-5, name=f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x) if relu else x


def bottleneck(x, planes, strides, name):
    """1x1 reduce -> grouped 3x3 (stride here) -> 1x1 expand, plus the (projected) shortcut, then ReLU."""
    width = planes * WIDTH_PER_GROUP * GROUPS // 64
    shortcut = x
    if strides != 1 or x.shape[-1] != planes * EXPANSION:
        shortcut = conv_bn(x, planes * EXPANSION, 1, f"{name}_downsample", strides, relu=False)
    y = conv_bn(x, width, 1, f"{name}_1")
    y = conv_bn(y, width, 3, f"{name}_2", strides, groups=GROUPS)
    y = conv_bn(y, planes * EXPANSION, 1, f"{name}_3", relu=False)
    y = keras.layers.Add(name=f"{name}_add")([shortcut, y])
    return keras.layers.ReLU(name=f"{name}_out")(y)


@register("resnext50", "stem_conv", reference="Xie et al. 2017, Aggregated residual transformations")
def resnext50(num_classes, input_shape=(224, 224, 3), weights=None, dropout=0.0):
    """weights: None (random init) or the path of a `.weights.h5` of this backbone (image to pooled features),
    e.g. one trained elsewhere; there are no ImageNet weights for it in Keras."""
    inputs = keras.Input(input_shape, name="image")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1, name="rescale")(inputs)
    x = conv_bn(x, 64, 7, "stem", strides=2)
    x = keras.layers.MaxPooling2D(3, 2, padding="same", name="stem_pool")(x)
    for stage, (planes, blocks) in enumerate(STAGES, start=1):
        for block in range(blocks):
            strides = 2 if stage > 1 and block == 0 else 1
            x = bottleneck(x, planes, strides, f"stage{stage}_block{block}")
    features = keras.layers.GlobalAveragePooling2D(name=FEATURE_LAYER)(x)
    if weights is not None:
        keras.Model(inputs, features).load_weights(weights)
    return keras.Model(inputs, classifier_head(features, num_classes, dropout), name="resnext50")
