"""Model registry: `build_model(name, ...)`, `list_models()` and `model_info(name)`; model files register builders
with `@register`.

Each entry declares what the rest of the package would otherwise guess from layer names or types (timm's
pretrained_cfg idea): a ModelInfo with its stem, its Grad-CAM feature layer, its classifier, the layers trained
while the backbone is frozen, whether the exporter's tf_keras twin rebuilds it (int8_qat, pruning), whether it takes
any input size, and what it accepts as `weights`, so that one place checks them and says the fix: `imagenet` (Keras
hosts ImageNet weights of its backbone), `local` (a backbone `.weights.h5` file loads into it). The layers
themselves are found here too (feature_layer, classifier_layer, stem_layer, ModelInfo.stem_parts): no other module
looks a layer up by its name.
"""

import contextlib
import importlib
import os
from dataclasses import dataclass

from mineralnet.errors import MineralnetError
from mineralnet.models.head import CLASSIFIER, FEATURE_LAYER, PREDICTIONS

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
    classifier: str = PREDICTIONS  # the float32 Dense softmax: Grad-CAM's logits; pruning leaves it whole
    head_layers: tuple = CLASSIFIER  # trained during the frozen-backbone warm-up (absent ones are skipped)
    qat_twin: bool = False  # mineralnet.export.qat.twin rebuilds it in tf_keras, so int8_qat and pruning work
    any_size: bool = True  # builds with input_shape (None, None, 3) (False: a Flatten ties the head to the size)
    imagenet: bool = False  # Keras hosts ImageNet weights of its backbone (--weights imagenet)
    local_weights: bool = True  # a backbone .weights.h5 file loads into it (--weights PATH)
    image_size: int = 224  # the input size of its reference (the paper, ImageNet weights); builds at others too
    reference: str = ""  # the paper it follows

    def stem_parts(self, layer_names):
        """The names among `layer_names` that make the stem: the stem itself, or, in a flat copy of the model (the
        QAT twin, whose tf_keras layers replace the nested stem Sequential), the stem's layers, which keep its name
        as their prefix. In graph order, so the last one is the layer whose output leaves the stem."""
        return [name for name in layer_names if name.startswith(self.stem)]


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


def _named(model, name):
    return next((layer for layer in model.layers if layer.name == name), None)


def feature_layer(model):
    """The layer whose input is the feature map Grad-CAM explains and the QAT twin's head starts at: the layer
    named by the model's registry entry (found by the model's name).

    Fallback, by layer type: the last global pooling or flatten layer. Model files saved before the builders named
    their pooling layer (run directories of older versions: ConvNeXt and VGG19 had keras.applications'
    `global_average_pooling2d_N`) and models built outside the registry have no layer of the declared name.
    """
    import keras

    info = registered_info(model)
    layer = _named(model, info.feature_layer) if info is not None else None
    if layer is not None:
        return layer
    kinds = (keras.layers.GlobalAveragePooling2D, keras.layers.GlobalMaxPooling2D, keras.layers.Flatten)
    pooling = [layer for layer in model.layers if isinstance(layer, kinds)]
    return pooling[-1] if pooling else None


def classifier_name(model):
    """The name of the model's classifier layer: its registry entry's (ModelInfo.classifier), else the name
    head.classifier_head gives it (models built outside the registry, e.g. an ensemble's average)."""
    info = registered_info(model)
    return info.classifier if info is not None else PREDICTIONS


def classifier_layer(model):
    """The model's classifier layer (classifier_name), or None where it has no layer of that name."""
    return _named(model, classifier_name(model))


def stem_layer(model):
    """The stem layer (or nested block) its registry entry names, or None: a model from elsewhere, or a file whose
    layers do not match its registry name."""
    info = registered_info(model)
    return _named(model, info.stem) if info is not None else None


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
