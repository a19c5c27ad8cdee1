"""The tf_keras twin of a Keras 3 ConvNeXt model: the same layers and weights, rebuilt flat for tfmot.

tfmot 0.8.1 quantizes only tf_keras (Keras 2) Sequential/Functional models and refuses nested models, so the
ConvNeXt stem and downsampling Sequentials become plain layers here, the grouped 7x7 convolutions become
DepthwiseConv2D (same kernel, other layout) and the residual sums become `Add` layers. The do-nothing
`*_identity` activations of keras.applications' ConvNeXt are left out. Names follow the Keras 3 layers, so
`copy_weights` pairs them by name and fails loudly on anything it cannot pair; `check_agreement` then proves the
two compute the same function before any training starts.
"""

import numpy as np
import tf_keras

from mineralnet.export.errors import ExportError
from mineralnet.export.qat.layers import ECA, GeluSigmoid, LayerScale, Standardize
from mineralnet.export.qat.process import MAX_TWIN_PROB_DIFF
from mineralnet.models import feature_layer
from mineralnet.models.convnext import BACKBONE_NAME, ECA_LAYERS, NUM_STAGES

L = tf_keras.layers


def flatten_layers(model):
    """The model's layers with every nested model (the Keras 3 stem and downsampling Sequentials) expanded."""
    for layer in model.layers:
        if hasattr(layer, "layers"):
            yield from flatten_layers(layer)
        else:
            yield layer


def _count_blocks(names, stage):
    count = 0
    while f"{BACKBONE_NAME}_stage_{stage}_block_{count}_depthwise_conv" in names:
        count += 1
    return count


class _Twin:
    """Builds tf_keras layers configured like the Keras 3 layers of the same name."""

    def __init__(self, source, gelu="exact"):
        self.layers = {layer.name: layer for layer in flatten_layers(source)}
        self.gelu = gelu

    def config(self, name):
        return self.layers[name].get_config()

    def conv(self, name):
        config = self.config(name)
        if config.get("groups", 1) > 1:  # keras.applications' depthwise convolution: groups == channels
            return L.DepthwiseConv2D(config["kernel_size"], strides=config["strides"], padding=config["padding"],
                                     name=name)
        return L.Conv2D(config["filters"], config["kernel_size"], strides=config["strides"],
                        padding=config["padding"], name=name)

    def norm(self, name):
        return L.LayerNormalization(epsilon=self.config(name)["epsilon"], name=name)

    def dense(self, name):
        config = self.config(name)
        return L.Dense(config["units"], activation=config["activation"], name=name)

    def block(self, x, name, channels):
        """ConvNeXt block: depthwise 7x7, LayerNorm, pointwise x4, GELU, pointwise, LayerScale, residual add."""
        residual = x
        x = self.conv(f"{name}_depthwise_conv")(x)
        x = self.norm(f"{name}_layernorm")(x)
        x = self.dense(f"{name}_pointwise_conv_1")(x)
        if self.gelu == "sigmoid":
            x = GeluSigmoid(name=f"{name}_gelu")(x)
        else:
            x = L.Activation(self.config(f"{name}_gelu")["activation"], name=f"{name}_gelu")(x)
        x = self.dense(f"{name}_pointwise_conv_2")(x)
        x = LayerScale(channels, name=f"{name}_layer_scale")(x)
        return L.Add(name=f"{name}_add")([residual, x])

    def build(self, source):
        prefix = BACKBONE_NAME
        normalization = self.config(f"{prefix}_prestem_normalization")
        inputs = tf_keras.Input(source.input_shape[1:], name="image")
        x = Standardize(normalization["mean"], normalization["variance"],
                        name=f"{prefix}_prestem_normalization")(inputs)
        for stage in range(NUM_STAGES):
            if stage == 0:
                x = self.conv(f"{prefix}_stem_conv")(x)
                x = self.norm(f"{prefix}_stem_layernorm")(x)
            else:
                x = self.norm(f"{prefix}_downsampling_layernorm_{stage - 1}")(x)
                x = self.conv(f"{prefix}_downsampling_conv_{stage - 1}")(x)
            channels = int(x.shape[-1])
            for block in range(_count_blocks(self.layers, stage)):
                x = self.block(x, f"{prefix}_stage_{stage}_block_{block}", channels)
            eca = self.layers.get(ECA_LAYERS[stage])
            if eca is not None:  # between stages, on the sum after the last residual add
                x = ECA(int(eca.kernel.shape[0]), name=eca.name)(x)
        layers = list(source.layers)  # in graph order
        head = layers[layers.index(feature_layer(source)):]
        for layer in head:  # global average pooling, LayerNorm, optional dropout, softmax classifier
            kind = type(layer).__name__
            if kind == "GlobalAveragePooling2D":
                x = L.GlobalAveragePooling2D(name=layer.name)(x)
            elif kind == "LayerNormalization":
                x = self.norm(layer.name)(x)
            elif kind == "Dropout":
                x = L.Dropout(layer.get_config()["rate"], name=layer.name)(x)
            elif kind == "Dense":
                x = self.dense(layer.name)(x)
            else:
                raise ExportError(f"the QAT twin does not know head layer '{layer.name}' ({kind}): "
                                  "add it to mineralnet/export/qat/twin.py.")
        return tf_keras.Model(inputs, x, name=f"{source.name}_tf_keras")


def build_twin(source, gelu="exact"):
    """The flat tf_keras model with the architecture of the Keras 3 ConvNeXt `source`, weights not yet copied
    (the caller has checked it is a ConvNeXt: process.require_convnext). gelu="sigmoid" builds GELU in the form
    the int8 export ships (mineralnet.export.rewrite.INTEGER_GELU), so quantization-aware training trains it."""
    return _Twin(source, gelu).build(source)


def copy_weights(source, twin):
    """Copy every weight of `source` (Keras 3) into the same-named layer of `twin` (tf_keras); raise
    ExportError if a weight has no counterpart or a shape differs, so nothing is silently left random."""
    sources = {layer.name: layer for layer in flatten_layers(source)}
    copied = set()
    for layer in twin.layers:
        if not layer.weights:
            continue
        origin = sources.get(layer.name)
        if origin is None:
            raise ExportError(f"the QAT twin's layer '{layer.name}' has no Keras 3 counterpart: fix "
                              "mineralnet/export/qat/twin.py.")
        values = origin.get_weights()
        if isinstance(layer, L.DepthwiseConv2D):  # grouped (k, k, 1, C) -> depthwise (k, k, C, 1), same order
            values[0] = values[0].reshape(layer.depthwise_kernel.shape)
        expected = [tuple(weight.shape) for weight in layer.weights]
        if [value.shape for value in values] != expected:
            raise ExportError(f"layer '{layer.name}' has weights {[v.shape for v in values]} in Keras 3 but "
                              f"{expected} in the QAT twin: fix mineralnet/export/qat/twin.py.")
        layer.set_weights(values)
        copied.add(layer.name)
    missed = sorted(name for name, layer in sources.items() if layer.weights and name not in copied)
    if missed:
        raise ExportError(f"the QAT twin has no layer for the weights of {', '.join(missed[:5])}: fix "
                          "mineralnet/export/qat/twin.py.")


def source_layout(source, twin_weights):
    """{layer name: weights} of the twin (trained_weights) in the layout of `source`'s layer of that name: the
    inverse of copy_weights, so the exporter can put them back into the Keras 3 model."""
    sources = {layer.name: layer for layer in flatten_layers(source)}
    out = {}
    for name, values in twin_weights.items():
        shapes = [tuple(weight.shape) for weight in sources[name].weights]
        if len(shapes) != len(values):
            raise ExportError(f"layer '{name}' has {len(values)} weights in the QAT twin but {len(shapes)} in "
                              "Keras 3: fix mineralnet/export/qat/twin.py.")
        out[name] = [np.asarray(value).reshape(shape) for value, shape in zip(values, shapes)]
    return out


def check_agreement(source, twin, images, tolerance=MAX_TWIN_PROB_DIFF):
    """Max abs probability difference of the two models on `images` ((N, S, S, 3) uint8); raises ExportError
    above `tolerance`, because QAT of a twin computing something else would export a different model."""
    batch = images.astype(np.float32)
    expected = np.asarray(source.predict(batch, batch_size=32, verbose=0), np.float64)
    got = np.asarray(twin.predict(batch, batch_size=32, verbose=0), np.float64)
    difference = float(np.max(np.abs(expected - got)))
    if difference > tolerance:
        raise ExportError(f"the tf_keras twin differs from the Keras 3 model by up to {difference:.2e} in "
                          f"probability on {len(images)} test images (allowed {tolerance:.0e}): fix "
                          "mineralnet/export/qat/twin.py or layers.py so both compute the same function.")
    return difference
