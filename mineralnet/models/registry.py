"""Model registry: `build_model(name, ...)` and `list_models()`; model files register builders with `@register`."""

import os

_BUILDERS = {}
_FIXED_SIZE = set()


def register(name, any_size=True):
    """Decorator adding a builder `fn(num_classes, input_shape, weights, **kwargs) -> keras.Model`; any_size=False
    for models whose head depends on the image size (a Flatten before Dense), which cannot take (None, None, 3)."""

    def add(builder):
        if name in _BUILDERS:
            raise ValueError(f"model '{name}' is registered twice.")
        _BUILDERS[name] = builder
        if not any_size:
            _FIXED_SIZE.add(name)
        return builder

    return add


def takes_any_size(name):
    """Whether `name` builds with input_shape (None, None, 3), as progressive resizing needs."""
    return name not in _FIXED_SIZE


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
