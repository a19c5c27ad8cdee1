"""Model registry: `build_model(name, ...)` and `list_models()`; model files register builders with `@register`."""

import os

_BUILDERS = {}


def register(name):
    """Decorator adding a builder `fn(num_classes, input_shape, weights, **kwargs) -> keras.Model`."""

    def add(builder):
        if name in _BUILDERS:
            raise ValueError(f"model '{name}' is registered twice.")
        _BUILDERS[name] = builder
        return builder

    return add


def list_models():
    """Names accepted by `build_model`, sorted."""
    return sorted(_BUILDERS)


def build_model(name, num_classes, input_shape=(224, 224, 3), weights=None, **kwargs):
    """Build registry model `name` with a `num_classes`-way softmax head.

    Every model takes raw RGB pixels in 0-255 (uint8 or float) and normalises them itself.
    weights: None (random init), "imagenet" (Keras' ImageNet backbone weights; needs internet) or the path of a
    backbone weights file (`.weights.h5`, as saved by `backbone.save_weights`).
    """
    if name not in _BUILDERS:
        raise ValueError(f"unknown model '{name}': choose one of {', '.join(list_models())}.")
    if int(num_classes) < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}.")
    return _BUILDERS[name](int(num_classes), tuple(input_shape), weights, **kwargs)


def check_local_weights(model_name, weights):
    """For models Keras hosts no weights for: only None or an existing backbone `.weights.h5` is accepted."""
    if weights is not None and not os.path.isfile(str(weights)):
        raise ValueError(
            f"{model_name} has no pretrained weights '{weights}': use --weights none, or the path of an existing "
            f"{model_name} backbone .weights.h5 file."
        )
