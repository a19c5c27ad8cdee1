"""TensorFlow, imported once with its start-up noise hidden: every mineralnet path that needs TensorFlow (or Keras,
which imports it) calls `import_tensorflow()` first, so `import mineralnet`, `train.py --help` and argument errors
stay free of it (seconds faster) while training, export and loading still start quietly."""

import os
import sys


def import_tensorflow():
    """The tensorflow module, imported (the first time) and its devices probed with the process's stderr (fd 2)
    sent to /dev/null.

    TensorFlow 2.21 logs through absl before absl is initialised, so TF_CPP_MIN_LOG_LEVEL no longer hides its
    start-up lines, and a CPU-only machine gets a "failed call to cuInit" error line that is no error at all. A
    Python exception raised meanwhile still surfaces once stderr is back. TF_CPP_MIN_LOG_LEVEL=0 shows everything.
    """
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "0":
        import tensorflow as tf

        return tf
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        import tensorflow as tf

        tf.config.list_physical_devices()  # the CUDA probe; logical devices can still be configured after it
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    return tf
