"""Training configuration: the paper's defaults, overridden by a YAML/JSON file, overridden by flags."""

import json
import os

from mineralnet.data.pipeline import AugmentConfig
from mineralnet.models.registry import takes_any_size

DEFAULTS = {
    "data": None,  # folder with one sub-folder per class
    "demo": False,  # make and use the synthetic demo dataset instead of --data
    "out": "runs/train",
    "model": "eca_convnext_tiny",
    "weights": "none",  # imagenet | none | PATH of a backbone .weights.h5
    "image_size": 224,
    "epochs": 200,
    "batch_size": 32,
    "lr": 1e-3,
    "warmup_epochs": 0,
    "label_smoothing": 0.0,
    "dropout": 0.0,
    "mixup": 0.0,  # Beta alpha of Mixup on training batches (0 = off; 0.2-0.8 is usual)
    "cutmix": 0.0,  # Beta alpha of CutMix (0 = off; 1.0 is usual); with both on, each batch picks one
    "progressive_sizes": [],  # train the first epochs at these smaller sizes, then at image_size (e.g. [32, 48])
    "ema": 0.0,  # momentum of an exponential moving average of the weights, validated and saved (0 = off)
    "freeze_epochs": 0,  # head-only warm-up epochs with the backbone frozen
    "seed": 0,
    "split": None,  # reuse this split.csv instead of making one
    "split_ratios": "6:1:1:2",  # train:val:calib:test; train:val:test (e.g. 6:2:2) leaves calib out
    "limit_per_class": None,
    "class_weights": False,
    "mixed_precision": "off",  # off | float16 | bfloat16
    "strategy": "auto",  # auto | default | mirrored | multiworker
    "cpu_devices": 1,  # split the CPU into N logical devices (to exercise distribution without GPUs)
    "augment": AugmentConfig().to_dict(),
    "evaluate": True,  # evaluate the best model on the test subset at the end
    "tta": False,  # also report test-time augmentation (8 flips/rotations averaged) in the evaluation
}
CHOICES = {
    "mixed_precision": ("off", "float16", "bfloat16"),
    "strategy": ("auto", "default", "mirrored", "multiworker"),
}


class ConfigError(ValueError):
    """A configuration problem, found before anything is written."""


def load_config_file(path):
    """A YAML (.yaml/.yml) or JSON config file as a dict."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file '{path}' does not exist: pass --config with a YAML or JSON file.")
    with open(path) as handle:
        text = handle.read()
    try:
        if path.endswith((".yaml", ".yml")):
            import yaml

            values = yaml.safe_load(text) or {}
        else:
            values = json.loads(text)
    except Exception as error:
        raise ConfigError(f"config file '{path}' does not parse ({error}): fix its syntax.") from error
    if not isinstance(values, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping of option: value.")
    return values


def resolve_config(file_values=None, overrides=None):
    """DEFAULTS <- config file <- explicit overrides (None values in overrides are ignored); validated."""
    config = json.loads(json.dumps(DEFAULTS))
    for source, values in (("config file", file_values or {}), ("flags", overrides or {})):
        for key, value in values.items():
            key = key.replace("-", "_")
            if key not in DEFAULTS:
                raise ConfigError(f"unknown option '{key}' in {source}: valid options are {', '.join(DEFAULTS)}.")
            if value is None:
                continue
            if key == "augment":
                config["augment"].update(value)
            else:
                config[key] = value
    return validate(config)


def validate(config):
    for key, allowed in CHOICES.items():
        if config[key] not in allowed:
            raise ConfigError(f"option '{key}' is {config[key]!r}: use one of {', '.join(allowed)}.")
    for key in ("image_size", "epochs", "batch_size", "cpu_devices"):
        if int(config[key]) < 1:
            raise ConfigError(f"option '{key}' must be a positive integer, got {config[key]!r}.")
    if int(config["image_size"]) < 32:
        raise ConfigError(f"image_size {config['image_size']} is too small: the models need at least 32 px.")
    if not 0 <= int(config["freeze_epochs"]) < int(config["epochs"]):
        raise ConfigError("freeze_epochs must be at least 0 and less than epochs (the rest fine-tunes everything).")
    for key in ("mixup", "cutmix", "label_smoothing"):
        if float(config[key]) < 0:
            raise ConfigError(f"option '{key}' must be 0 (off) or positive, got {config[key]!r}.")
    sizes = config["progressive_sizes"] or []
    if isinstance(sizes, str):
        sizes = [s for s in sizes.replace(" ", "").split(",") if s]
    try:
        config["progressive_sizes"] = [int(s) for s in sizes]
    except (TypeError, ValueError) as error:
        raise ConfigError(f"progressive_sizes must be image sizes like 32,48, got {sizes!r}.") from error
    if any(not 32 <= s < int(config["image_size"]) for s in config["progressive_sizes"]) or \
            config["progressive_sizes"] != sorted(set(config["progressive_sizes"])):
        raise ConfigError(f"progressive_sizes {config['progressive_sizes']} must rise, each at least 32 and below "
                          f"image_size {config['image_size']}.")
    if config["progressive_sizes"] and not takes_any_size(config["model"]):
        raise ConfigError(f"model '{config['model']}' needs one fixed input size (Flatten head), so it cannot "
                          "train with progressive_sizes: drop that option or pick a model with global pooling.")
    if len(config["progressive_sizes"]) >= int(config["epochs"]):
        raise ConfigError("progressive resizing needs more epochs than progressive_sizes (one stage each, then "
                          "image_size).")
    if not (float(config["ema"]) == 0 or 0.5 <= float(config["ema"]) < 1):
        raise ConfigError(f"option 'ema' is a momentum in [0.5, 1) such as 0.999 (0 = off), got {config['ema']!r}.")
    if not config["data"] and not config["demo"]:
        raise ConfigError("no data: pass --data DIR (one sub-folder per class) or --demo for the synthetic demo set.")
    try:
        AugmentConfig.from_dict(config["augment"])
    except (TypeError, ValueError) as error:
        raise ConfigError(str(error)) from error
    if str(config["weights"]).lower() == "none":
        config["weights"] = "none"
    return config


def backbone_weights(config):
    """The `weights` argument of build_model for this config."""
    return None if config["weights"] == "none" else config["weights"]
