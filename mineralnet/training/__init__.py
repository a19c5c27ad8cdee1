"""Training: `train(config)` runs a whole training job into one run directory (see mineralnet.rundir).

The config (and with it train.py's flags) loads without TensorFlow; `train` and `run_from_args` import it (quietly,
through mineralnet._tf) on first use (PEP 562).
"""

import importlib

from mineralnet.training.config import DEFAULTS, ConfigError, TrainConfig, load_config_file, resolve_config

__all__ = ["DEFAULTS", "ConfigError", "TrainConfig", "load_config_file", "resolve_config", "run_from_args", "train"]


def __getattr__(name):
    if name in ("run_from_args", "train", "loop"):
        from mineralnet._tf import import_tensorflow

        import_tensorflow()
        loop = importlib.import_module("mineralnet.training.loop")
        return loop if name == "loop" else getattr(loop, name)
    raise AttributeError(f"module 'mineralnet.training' has no attribute '{name}'")
