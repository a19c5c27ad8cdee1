"""mineralnet: recognise minerals, ores and metal scrap in photographs (ECA-ConvNeXt-Tiny on Keras 3)."""

import os

# TensorFlow's C++ start-up lines (CUDA probing, oneDNN notes) drown the training output; set it to 0 to see them.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _quiet_tensorflow_start():
    """Import TensorFlow and probe its devices with the process's stderr (fd 2) sent to /dev/null.

    TensorFlow 2.21 logs through absl before absl is initialised, so TF_CPP_MIN_LOG_LEVEL no longer hides its
    start-up lines, and a CPU-only machine gets a "failed call to cuInit" error line that is no error at all. A
    Python exception raised meanwhile still surfaces once stderr is back. TF_CPP_MIN_LOG_LEVEL=0 shows everything.
    """
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "0":
        return
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        import tensorflow as tf

        tf.config.list_physical_devices()  # the CUDA probe; logical devices can still be configured after it
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


_quiet_tensorflow_start()

__version__ = "0.1.0"

from mineralnet import layers  # noqa: E402,F401  (registers ECA for keras.saving)
from mineralnet.models import build_model, list_models  # noqa: E402

__all__ = ["__version__", "build_model", "layers", "list_models"]
