"""ECA-ConvNeXt-Tiny (Li et al., 2024) and plain ConvNeXt-Tiny, on `keras.applications.ConvNeXtTiny`."""

import keras

from mineralnet.layers import ECA
from mineralnet.models.head import CLASSIFIER, classifier_head, name_feature_layer
from mineralnet.models.registry import register

BACKBONE_NAME = "convnext_tiny"
NUM_STAGES = 4
STEM = f"{BACKBONE_NAME}_stem"  # keras.applications' stem Sequential (4x4 stride-4 convolution, LayerNorm)
ECA_LAYERS = tuple(f"eca_stage_{stage}" for stage in range(NUM_STAGES))  # after each stage output, in order


def convnext_tiny_backbone(input_shape, weights=None):
    """Keras' ConvNeXt-Tiny without its classifier (ImageNet normalisation inside, global average pool, then
    LayerNormalization): the part whose weights `weights` ("imagenet" or a `.weights.h5` path) describe."""
    return keras.applications.ConvNeXtTiny(
        include_top=False,
        include_preprocessing=True,
        weights=weights,
        input_shape=input_shape,
        pooling="avg",
    )


def stage_output_consumers(backbone):
    """Names of the layers that consume the four stage outputs (the tensors after each stage's last residual
    add): downsampling blocks 0-2 and the global average pooling before the final norm."""
    consumers = [f"{BACKBONE_NAME}_downsampling_block_{i}" for i in range(NUM_STAGES - 1)]
    pooling = [layer.name for layer in backbone.layers if isinstance(layer, keras.layers.GlobalAveragePooling2D)]
    return consumers + pooling


def build_convnext(num_classes, input_shape, weights=None, eca=True, dropout=0.0, name=None):
    backbone = name_feature_layer(convnext_tiny_backbone(input_shape, weights))
    ecas = {}
    if eca:
        for eca_name, consumer in zip(ECA_LAYERS, stage_output_consumers(backbone)):
            ecas[consumer] = ECA(name=eca_name)

    def call_with_attention(layer, *args, **kwargs):
        # ECA sits on the tensor *after* the residual add (between stages), never inside the residual branch.
        if layer.name in ecas:
            args = (ecas[layer.name](args[0]),) + args[1:]
        return layer(*args, **kwargs)

    # clone_function keeps the backbone's own layers (and so its pretrained weights).
    features_model = keras.models.clone_model(
        backbone,
        input_tensors=keras.Input(input_shape, name="image"),
        clone_function=lambda layer: layer,
        call_function=call_with_attention,
    )
    outputs = classifier_head(features_model.output, num_classes, dropout)
    model_name = name or ("eca_convnext_tiny" if eca else "convnext_tiny")
    shared = keras.Model(features_model.input, outputs, name=model_name)
    # The layers above still belong to the backbone's graph too (two inbound nodes each, so `layer.input` would
    # point into the backbone). A clone owns its layers outright; copy the (pretrained) weights across.
    model = keras.models.clone_model(shared)
    model.set_weights(shared.get_weights())
    return model


def imagenet_backbone(input_shape):
    return convnext_tiny_backbone(input_shape, "imagenet")


@register("eca_convnext_tiny", STEM, imagenet_backbone, head_layers=ECA_LAYERS + CLASSIFIER, qat_twin=True,
          reference="Li et al. 2024, ECA-ConvNeXt-Tiny for mineral classification")
def eca_convnext_tiny(num_classes, input_shape=(224, 224, 3), weights=None, dropout=0.0):
    """ConvNeXt-Tiny with ECA on each of the four stage outputs, then GAP -> LayerNorm -> dropout -> softmax."""
    return build_convnext(num_classes, input_shape, weights, eca=True, dropout=dropout)


@register("convnext_tiny", STEM, imagenet_backbone, qat_twin=True, reference="Liu et al. 2022, A ConvNet for the 2020s")
def convnext_tiny(num_classes, input_shape=(224, 224, 3), weights=None, dropout=0.0):
    """ConvNeXt-Tiny with the same head and no attention: the ablation baseline."""
    return build_convnext(num_classes, input_shape, weights, eca=False, dropout=dropout)
