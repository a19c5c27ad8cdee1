"""Training: `train(config)` runs a whole training job into one run directory (see mineralnet.rundir)."""

from mineralnet.training.config import DEFAULTS, ConfigError, load_config_file, resolve_config
from mineralnet.training.loop import run_from_args, train

__all__ = ["DEFAULTS", "ConfigError", "load_config_file", "resolve_config", "run_from_args", "train"]
