"""ECA-ResNet-18/34/50 (Wang et al., CVPR 2020, "ECA-Net"), ECA-Net's own architecture, which Keras lacks.

A torchvision ResNet (basic blocks [2, 2, 2, 2] / [3, 4, 6, 3], bottlenecks [3, 4, 6, 3] with the stride on the
3x3 convolution, a projection shortcut where the shape changes) with an ECA layer in every block, placed as in the
paper's Fig. 2 and its official code: after the last convolution + BatchNorm of the residual branch, before the
residual add. ECA adds only its k kernel weights per block (k from the block's output channels, see
`mineralnet.layers.eca_kernel_size`), so the trainable parameters at 1000 classes are torchvision's
(11,689,512 / 21,797,672 / 25,557,032) plus 36 / 74 / 86 ECA weights. The paper quotes "+80" for ECA-Net50: 16
blocks x k=5; the official code's rounding gives k=7 for the 2048-channel stage (3 blocks x 2 more).

Why it is here: ConvNeXt needs large data when trained from scratch; ResNets train far better on a few hundred
photos per class (issue 16), and this is the ECA backbone the ECA-Net paper itself measured.
"""

import keras

from mineralnet.layers import ECA
from mineralnet.models.head import FEATURE_LAYER, classifier_head
from mineralnet.models.registry import register
from mineralnet.models.resnext import conv_bn

# name -> (block kind, blocks per stage); stage s has 64 * 2**s planes, a bottleneck outputs 4 x planes channels
DEPTHS = {
    "eca_resnet18": ("basic", (2, 2, 2, 2)),
    "eca_resnet34": ("basic", (3, 4, 6, 3)),
    "eca_resnet50": ("bottleneck", (3, 4, 6, 3)),
}
EXPANSION = {"basic": 1, "bottleneck": 4}


def residual_block(x, kind, planes, strides, name):
    """One basic (3x3, 3x3) or bottleneck (1x1, 3x3 with the stride, 1x1) block; ECA on the branch's last BN
    output, then the add with the (projected) shortcut, then ReLU."""
    out_channels = planes * EXPANSION[kind]
    shortcut = x
    if strides != 1 or x.shape[-1] != out_channels:
        shortcut = conv_bn(x, out_channels, 1, f"{name}_downsample", strides, relu=False)
    if kind == "basic":
        y = conv_bn(x, planes, 3, f"{name}_1", strides)
        y = conv_bn(y, planes, 3, f"{name}_2", relu=False)
    else:
        y = conv_bn(x, planes, 1, f"{name}_1")
        y = conv_bn(y, planes, 3, f"{name}_2", strides)
        y = conv_bn(y, out_channels, 1, f"{name}_3", relu=False)
    y = ECA(name=f"{name}_eca")(y)
    y = keras.layers.Add(name=f"{name}_add")([shortcut, y])
    return keras.layers.ReLU(name=f"{name}_out")(y)


def build_eca_resnet(name, num_classes, input_shape, weights=None, dropout=0.0):
    """weights: None (random init) or the path of a `.weights.h5` of this backbone (image to pooled features),
    e.g. one trained elsewhere; there are no ImageNet weights for it in Keras."""
    kind, depths = DEPTHS[name]
    inputs = keras.Input(input_shape, name="image")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1, name="rescale")(inputs)
    x = conv_bn(x, 64, 7, "stem", strides=2)
    x = keras.layers.MaxPooling2D(3, 2, padding="same", name="stem_pool")(x)
    for stage, blocks in enumerate(depths, start=1):
        for block in range(blocks):
            strides = 2 if stage > 1 and block == 0 else 1
            x = residual_block(x, kind, 64 * 2 ** (stage - 1), strides, f"stage{stage}_block{block}")
    features = keras.layers.GlobalAveragePooling2D(name=FEATURE_LAYER)(x)
    if weights is not None:
        keras.Model(inputs, features).load_weights(weights)
    return keras.Model(inputs, classifier_head(features, num_classes, dropout), name=name)


def _registered(name):
    @register(name, "stem_conv", reference="Wang et al. 2020, ECA-Net")
    def builder(num_classes, input_shape=(224, 224, 3), weights=None, dropout=0.0):
        return build_eca_resnet(name, num_classes, input_shape, weights, dropout)

    builder.__name__ = builder.__qualname__ = name
    builder.__doc__ = build_eca_resnet.__doc__
    return builder


eca_resnet18, eca_resnet34, eca_resnet50 = (_registered(name) for name in DEPTHS)
