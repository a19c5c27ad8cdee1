"""Model registry: `build_model(name, ...)`, `list_models()` and `model_info(name)`; model files register builders
with `@register`.

Each entry declares what the rest of the package would otherwise guess from layer names or types (timm's
pretrained_cfg idea): a ModelInfo with its stem, its Grad-CAM feature layer, the layers trained while the backbone
is frozen, whether it takes any input size, and what it accepts as `weights`, so that one place checks them and
says the fix: `imagenet` (Keras hosts ImageNet weights of its backbone), `local` (a backbone `.weights.h5` file
loads into it).
"""

import contextlib
import importlib
import os
from dataclasses import dataclass

from mineralnet.errors import MineralnetError
from mineralnet.models.head import CLASSIFIER, FEATURE_LAYER

# The module of each built-in model: list_models() names them without importing TensorFlow (train.py --help), and a
# model's module (whose @register fills the tables below) is imported the first time the model is asked about.
_MODULES = {"eca_convnext_tiny": "convnext", "convnext_tiny": "convnext", "vgg19": "applications",
            "resnet50": "applications", "googlenet": "googlenet", "resnext50": "resnext", "simple_cnn": "simple_cnn",
            "eca_resnet18": "ecaresnet", "eca_resnet34": "ecaresnet", "eca_resnet50": "ecaresnet"}
_BUILDERS = {}
_INFO = {}
_IMAGENET = {}  # name -> function(input_shape) building its backbone with Keras' ImageNet weights (downloads)
DOWNLOAD_FAILURE = "URL fetch failure"  # how keras.utils.get_file words a failed download


class WeightsError(MineralnetError):
    """Pretrained weights that cannot be had (no internet, no such file, none for that model); one line with
    the fix."""


@dataclass(frozen=True)
class ModelInfo:
    """What a registry model is, by layer names its builder gives (every model built by `build_model` carries
    them, and its Keras name is `name`, so a loaded model file finds its entry: `registered_info`)."""

    name: str
    stem: str  # the first layer (or block) of the backbone proper, after the input normalisation
    feature_layer: str = FEATURE_LAYER  # global pooling/flatten whose input is the map Grad-CAM explains
    head_layers: tuple = CLASSIFIER  # trained during the frozen-backbone warm-up (absent ones are skipped)
    any_size: bool = True  # builds with input_shape (None, None, 3) (False: a Flatten ties the head to the size)
    imagenet: bool = False  # Keras hosts ImageNet weights of its backbone (--weights imagenet)
    local_weights: bool = True  # a backbone .weights.h5 file loads into it (--weights PATH)
    image_size: int = 224  # the input size of its reference (the paper, ImageNet weights); builds at others too
    reference: str = ""  # the paper it follows


def register(name, stem, imagenet_backbone=None, **info):
    """Decorator adding a builder `fn(num_classes, input_shape, weights, **kwargs) -> keras.Model` with its
    ModelInfo (`stem` and the ModelInfo fields in `info`).

    imagenet_backbone: `fn(input_shape)` -> the backbone with Keras' ImageNet weights (what a `--weights PATH`
    file holds), for models that have them (it sets ModelInfo.imagenet).
    """

    def add(builder):
        if name in _BUILDERS:
            raise ValueError(f"model '{name}' is registered twice.")
        _BUILDERS[name] = builder
        _INFO[name] = ModelInfo(name, stem, imagenet=imagenet_backbone is not None, **info)
        if imagenet_backbone is not None:
            _IMAGENET[name] = imagenet_backbone
        return builder

    return add


def _load(name):
    """Import the module that registers built-in model `name` (TensorFlow first, its start-up noise hidden)."""
    if name in _MODULES and name not in _BUILDERS:
        from mineralnet._tf import import_tensorflow

        import_tensorflow()
        importlib.import_module(f"mineralnet.models.{_MODULES[name]}")


def register_all():
    """Import every built-in model's module: registers their builders and the Keras classes (ECA, ...) that
    keras.saving.load_model needs to load a saved model of them."""
    for name in _MODULES:
        _load(name)


def model_info(name):
    """The ModelInfo of registry model `name` (imports its module, and so TensorFlow, the first time)."""
    _load(name)
    if name not in _INFO:
        raise ValueError(f"unknown model '{name}': choose one of {', '.join(list_models())}.")
    return _INFO[name]


def registered_info(model):
    """The ModelInfo of a Keras model built by `build_model` (found by its name, which model files keep), or None
    for a model from elsewhere."""
    register_all()
    return _INFO.get(getattr(model, "name", None))


def takes_any_size(name):
    """Whether `name` builds with input_shape (None, None, 3), as progressive resizing needs (True for a name the
    registry does not know, e.g. `auto` before it is resolved: build_model refuses unknown names)."""
    _load(name)
    return name not in _INFO or _INFO[name].any_size


def has_imagenet_weights(name):
    _load(name)
    return name in _INFO and _INFO[name].imagenet


def list_models():
    """Names accepted by `build_model`, sorted (without importing any model's module)."""
    return sorted(set(_BUILDERS) | set(_MODULES))


def check_weights(name, weights):
    """Refuse `weights` that model `name` cannot take, with the fix; None, "imagenet" or a file path."""
    if weights is None:
        return
    if not model_info(name).local_weights:
        raise WeightsError(f"{name} has no pretrained weights: use --weights none.")
    if weights == "imagenet":
        if not model_info(name).imagenet:
            raise WeightsError(f"{name} has no ImageNet weights in Keras: pass --weights none, or the path of a "
                               f"{name} backbone .weights.h5 file trained elsewhere.")
    elif not os.path.isfile(str(weights)):
        raise WeightsError(f"backbone weights file '{weights}' does not exist: pass --weights imagenet, none, or the "
                           f"path of a {name} backbone .weights.h5 file (python -m mineralnet.models.weights saves one).")


def offline_error(name, error):
    """The one-line WeightsError for a failed ImageNet download."""
    return WeightsError(
        f"the ImageNet weights of {name} could not be downloaded (no internet? {DOWNLOAD_FAILURE}): pass "
        f"--weights PATH with a local copy (on a connected machine: python -m mineralnet.models.weights --model "
        f"{name} --out {name}_imagenet.weights.h5), or --weights none to train from scratch."
    )


@contextlib.contextmanager
def imagenet_download(name):
    """Inside the block, a failed download of Keras' ImageNet weights becomes offline_error(name)."""
    try:
        yield
    except Exception as error:
        if DOWNLOAD_FAILURE in str(error):
            raise offline_error(name, error) from None
        raise


def imagenet_backbone(name, input_shape):
    """Model `name`'s backbone with Keras' ImageNet weights (downloaded once, then cached): what a `--weights PATH`
    file of it holds."""
    register_all()  # the error below names every model that has them
    if name not in _IMAGENET:
        raise WeightsError(f"{name} has no ImageNet weights in Keras: choose one of {', '.join(sorted(_IMAGENET))}.")
    with imagenet_download(name):
        return _IMAGENET[name](tuple(input_shape))


def build_model(name, num_classes, input_shape=(224, 224, 3), weights=None, **kwargs):
    """Build registry model `name` with a `num_classes`-way softmax head.

    Every model takes raw RGB pixels in 0-255 (uint8 or float) and normalises them itself.
    weights: None (random init), "imagenet" (Keras' ImageNet backbone weights; needs internet once, then Keras
    caches them) or the path of a backbone weights file (`.weights.h5`, as saved by `backbone.save_weights` or
    `python -m mineralnet.models.weights`).
    """
    model_info(name)  # imports its module; ValueError for an unknown name
    if int(num_classes) < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}.")
    check_weights(name, weights)
    with imagenet_download(name) if weights == "imagenet" else contextlib.nullcontext():
        return _BUILDERS[name](int(num_classes), tuple(input_shape), weights, **kwargs)
