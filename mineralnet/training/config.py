"""Training configuration: the paper's defaults, overridden by a YAML/JSON file, overridden by flags."""

import json
import math
import os

from mineralnet.data.pipeline import AugmentConfig
from mineralnet.errors import MineralnetError
from mineralnet.models.registry import takes_any_size

DEFAULTS = {
    "data": None,  # folder with one sub-folder per class
    "demo": False,  # make and use the synthetic demo dataset instead of --data
    "out": "runs/train",
    "model": "eca_convnext_tiny",
    "weights": "imagenet",  # imagenet (the paper's transfer learning) | none | PATH of a backbone .weights.h5
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
    "init_from": None,  # start from the weights of this model.keras (same model, classes and size), e.g. to retrain
    "split_ratios": "6:1:1:2",  # train:val:calib:test; train:val:test (e.g. 6:2:2) leaves calib out
    "limit_per_class": None,
    "class_weights": False,
    "mixed_precision": "off",  # off | float16 | bfloat16
    "strategy": "auto",  # auto | default | mirrored | multiworker
    "cpu_devices": 1,  # split the CPU into N logical devices (to exercise distribution without GPUs)
    "augment": AugmentConfig().to_dict(),
    "evaluate": True,  # evaluate the best model on the test subset at the end
    "tta": False,  # also report test-time augmentation (8 flips/rotations averaged) in the evaluation
    "deterministic": False,  # TensorFlow op determinism: the same seed and data give the same history.csv
}
INTEGER_KEYS = ("image_size", "epochs", "batch_size", "warmup_epochs", "freeze_epochs", "seed", "cpu_devices")
FLOAT_KEYS = ("lr", "label_smoothing", "dropout", "mixup", "cutmix", "ema")
BOOL_KEYS = ("demo", "class_weights", "evaluate", "tta", "deterministic")
# What a resumed run may not change: the model, its input and the data it learns from are fixed at its start
# (a different value would be silently ignored by the restored checkpoint, or would mix two experiments).
FIXED_ON_RESUME = ("data", "demo", "model", "weights", "image_size", "split", "split_ratios", "limit_per_class",
                   "seed", "dropout", "mixed_precision", "ema", "freeze_epochs", "progressive_sizes", "batch_size")
MIN_IMAGE_SIZE = 32  # the registry's models downsample 32-fold
CHOICES = {
    "mixed_precision": ("off", "float16", "bfloat16"),
    "strategy": ("auto", "default", "mirrored", "multiworker"),
}


class ConfigError(MineralnetError):
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


def _cast(config):
    """Numbers and switches as their types, once, with one clear line for a value that is not one."""
    for keys, kind in ((INTEGER_KEYS, int), (FLOAT_KEYS, float)):
        for key in keys:
            value = config[key]
            try:
                if isinstance(value, bool) or (kind is int and float(value) != int(float(value))):
                    raise ValueError
                config[key] = kind(float(value)) if kind is int else float(value)
            except (TypeError, ValueError):
                raise ConfigError(f"option '{key}' must be {'a whole number' if kind is int else 'a number'}, "
                                  f"got {value!r}.") from None
            if not math.isfinite(config[key]):
                raise ConfigError(f"option '{key}' must be a finite number, got {value!r}.")
    for key in BOOL_KEYS:
        if not isinstance(config[key], bool):
            raise ConfigError(f"option '{key}' is a switch: use true or false, got {config[key]!r}.")
    if config["limit_per_class"] is not None:
        if isinstance(config["limit_per_class"], bool) or not str(config["limit_per_class"]).isdigit() \
                or int(config["limit_per_class"]) < 1:
            raise ConfigError(f"option 'limit_per_class' must be a positive whole number, got "
                              f"{config['limit_per_class']!r}.")
        config["limit_per_class"] = int(config["limit_per_class"])


def validate(config):
    """Cast and check every option; a value that makes no sense is refused before anything is written (a negative
    learning rate would train by gradient ascent for a whole run and report success)."""
    _cast(config)
    for key, allowed in CHOICES.items():
        if config[key] not in allowed:
            raise ConfigError(f"option '{key}' is {config[key]!r}: use one of {', '.join(allowed)}.")
    for key in ("image_size", "epochs", "batch_size", "cpu_devices"):
        if config[key] < 1:
            raise ConfigError(f"option '{key}' must be a positive integer, got {config[key]!r}.")
    if config["image_size"] < MIN_IMAGE_SIZE:
        raise ConfigError(f"image_size {config['image_size']} is too small: the models need at least "
                          f"{MIN_IMAGE_SIZE} px.")
    if not 0 <= config["freeze_epochs"] < config["epochs"]:
        raise ConfigError("freeze_epochs must be at least 0 and less than epochs (the rest fine-tunes everything).")
    if not 0 <= config["warmup_epochs"] < config["epochs"]:
        raise ConfigError(f"warmup_epochs must be at least 0 and less than epochs ({config['epochs']}), got "
                          f"{config['warmup_epochs']}.")
    if not config["lr"] > 0:
        raise ConfigError(f"option 'lr' must be positive (Adam's peak learning rate, e.g. 1e-3), got {config['lr']!r}.")
    for key in ("label_smoothing", "dropout"):
        if not 0 <= config[key] < 1:
            raise ConfigError(f"option '{key}' must be at least 0 and below 1, got {config[key]!r}.")
    for key in ("mixup", "cutmix"):
        if config[key] < 0:
            raise ConfigError(f"option '{key}' must be 0 (off) or positive, got {config[key]!r}.")
    sizes = config["progressive_sizes"] or []
    if isinstance(sizes, str):
        sizes = [s for s in sizes.replace(" ", "").split(",") if s]
    try:
        config["progressive_sizes"] = [int(s) for s in sizes]
    except (TypeError, ValueError) as error:
        raise ConfigError(f"progressive_sizes must be image sizes like 32,48, got {sizes!r}.") from error
    if any(not MIN_IMAGE_SIZE <= s < config["image_size"] for s in config["progressive_sizes"]) or \
            config["progressive_sizes"] != sorted(set(config["progressive_sizes"])):
        raise ConfigError(f"progressive_sizes {config['progressive_sizes']} must rise, each at least 32 and below "
                          f"image_size {config['image_size']}.")
    if config["progressive_sizes"] and not takes_any_size(config["model"]):
        raise ConfigError(f"model '{config['model']}' needs one fixed input size (Flatten head), so it cannot "
                          "train with progressive_sizes: drop that option or pick a model with global pooling.")
    if len(config["progressive_sizes"]) >= config["epochs"]:
        raise ConfigError("progressive resizing needs more epochs than progressive_sizes (one stage each, then "
                          "image_size).")
    if not (config["ema"] == 0 or 0.5 <= config["ema"] < 1):
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


def resume_changes(saved, config, finished_epochs):
    """The options a resumed run changes, {key: (old, new)}; refuses those that define the model or the data,
    and an --epochs below what the run already finished. Everything else (epochs, lr, warm-up, label smoothing,
    Mixup/CutMix, augmentation, ...) is applied from the resumed epoch on and recorded in config.json."""
    changes = {key: (saved.get(key), config[key]) for key in config
               if key not in ("out",) and _comparable(saved.get(key)) != _comparable(config[key])}
    for key in FIXED_ON_RESUME:
        if key in changes:
            old, new = changes[key]
            raise ConfigError(f"--{key.replace('_', '-')} {new} differs from the run's {old}: a resumed run keeps the "
                              f"model and data it started with. Drop the flag, or start a new run with another --out.")
    if config["epochs"] < finished_epochs:
        raise ConfigError(f"--epochs {config['epochs']} is below the {finished_epochs} epochs this run already "
                          "finished: pass a larger --epochs to extend it, or omit the flag.")
    return changes


def _comparable(value):
    if isinstance(value, str) and os.path.sep in value:
        return os.path.abspath(value)
    return json.loads(json.dumps(value))
