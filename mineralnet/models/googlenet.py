"""GoogLeNet (Inception v1, Szegedy et al. 2014, "Going deeper with convolutions"), which Keras lacks, built as
torchvision builds it since that is the baseline papers like ours train: no auxiliary classifiers, no LRN,
BatchNorm after every convolution, and a 3x3 kernel in the "5x5" branch. With the paper's 5x5 kernel the
network would have 7.0M parameters at 1000 classes; this one has torchvision's 6,624,904 (trainable).

Branch widths are exactly the paper's table 1. Max-pools use padding "same" (torchvision's ceil_mode), so the
network builds at 32 px and up.
"""


import keras

from mineralnet.models.head import FEATURE_LAYER, classifier_head
from mineralnet.models.registry import register

# (1x1, 3x3 reduce, 3x3, "5x5" reduce, "5x5", pool projection) per module: the paper's table 1.
INCEPTION_WIDTHS = {
    "3a": (64, 96, 128, 16, 32, 32),
    "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64),
    "4b": (160, 112, 224, 24, 64, 64),
    "4c": (128, 128, 256, 24, 64, 64),
    "4d": (112, 144, 288, 32, 64, 64),
    "4e": (256, 160, 320, 32, 128, 128),
    "5a": (256, 160, 320, 32, 128, 128),
    "5b": (384, 192, 384, 48, 128, 128),
}
STAGES = (("3a", "3b"), ("4a", "4b", "4c", "4d", "4e"), ("5a", "5b"))  # a stride-2 max-pool before each


def conv_bn(x, filters, kernel, name, strides=1):
    """Convolution without bias, BatchNorm (torchvision's eps), ReLU."""
    x = keras.layers.Conv2D(filters, kernel, strides, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = keras.layers.BatchNormalization(epsilon=1e-3, name=f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def inception(x, name):
    """Four parallel branches concatenated: inception_<name>, e.g. inception_3a (256 channels)."""
    ones, reduce3, threes, reduce5, fives, pool_projection = INCEPTION_WIDTHS[name]
    prefix = f"inception_{name}"
    pooled = keras.layers.MaxPooling2D(3, 1, padding="same", name=f"{prefix}_branch4_pool")(x)
    branches = [
        conv_bn(x, ones, 1, f"{prefix}_branch1"),
        conv_bn(conv_bn(x, reduce3, 1, f"{prefix}_branch2_reduce"), threes, 3, f"{prefix}_branch2"),
        conv_bn(conv_bn(x, reduce5, 1, f"{prefix}_branch3_reduce"), fives, 3, f"{prefix}_branch3"),
        conv_bn(pooled, pool_projection, 1, f"{prefix}_branch4"),
    ]
    return keras.layers.Concatenate(name=prefix)(branches)


@register("googlenet", "stem_conv1_conv", reference="Szegedy et al. 2014, Going deeper with convolutions")
def googlenet(num_classes, input_shape=(224, 224, 3), weights=None, dropout=0.0):
    """weights: None (random init) or the path of a `.weights.h5` of this backbone (image to pooled features),
    e.g. one trained elsewhere; there are no ImageNet weights for it in Keras."""
    inputs = keras.Input(input_shape, name="image")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1, name="rescale")(inputs)
    x = conv_bn(x, 64, 7, "stem_conv1", strides=2)
    x = keras.layers.MaxPooling2D(3, 2, padding="same", name="stem_pool1")(x)
    x = conv_bn(x, 64, 1, "stem_conv2")
    x = conv_bn(x, 192, 3, "stem_conv3")
    for index, stage in enumerate(STAGES):
        x = keras.layers.MaxPooling2D(3 if index < 2 else 2, 2, padding="same", name=f"stage{stage[0][0]}_pool")(x)
        for name in stage:
            x = inception(x, name)
    features = keras.layers.GlobalAveragePooling2D(name=FEATURE_LAYER)(x)
    if weights is not None:
        keras.Model(inputs, features).load_weights(weights)
    return keras.Model(inputs, classifier_head(features, num_classes, dropout), name="googlenet")
