"""mineralnet: recognise minerals, ores and metal scrap in photographs (ECA-ConvNeXt-Tiny on Keras 3).

`import mineralnet` does not import TensorFlow (the CLIs' --help and argument errors answer in a fraction of a
second): `build_model`, `list_models` and `layers` are resolved on first use (PEP 562), and the modules that need
TensorFlow import it through mineralnet._tf, which hides its start-up noise. tests/test_cli_help.py runs every
command's --help with TensorFlow, Keras and JAX blocked.
"""

import importlib
import os
import sys

# TensorFlow's C++ start-up lines (CUDA probing, oneDNN notes) drown the training output; set it to 0 to see them.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"

_LAZY = {"build_model": "mineralnet.models", "list_models": "mineralnet.models", "layers": "mineralnet.layers"}

__all__ = ["__version__", "build_model", "layers", "list_models"]


if "keras" in sys.modules:
    # Keras (and so TensorFlow) is loaded already: register mineralnet's Keras classes (ECA, ...) now, as
    # `import mineralnet` always did, so that keras.models.load_model finds them. Without Keras loaded, importing
    # mineralnet.layers (or mineralnet.models.register_all()) does it.
    from mineralnet.models.registry import register_all

    register_all()


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'mineralnet' has no attribute '{name}'")
    module = importlib.import_module(_LAZY[name])
    value = module if module.__name__ == f"mineralnet.{name}" else getattr(module, name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
