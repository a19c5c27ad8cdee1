"""mineralnet: recognise minerals, ores and metal scrap in photographs (ECA-ConvNeXt-Tiny on Keras 3)."""

import os

# TensorFlow's C++ start-up lines (CUDA probing, oneDNN notes) drown the training output; set it to 0 to see them.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"

from mineralnet import layers  # noqa: E402,F401  (registers ECA for keras.saving)
from mineralnet.models import build_model, list_models  # noqa: E402

__all__ = ["__version__", "build_model", "layers", "list_models"]
