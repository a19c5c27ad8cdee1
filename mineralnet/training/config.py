"""Training configuration: the paper's defaults, overridden by a YAML/JSON file, overridden by flags.

One table, `TrainConfig`'s fields, holds every option with its type, default, help, choices and whether a resumed
run may change it: train.py's flags and their --help, the README's flag table (`python -m mineralnet.train_cli
--markdown`), the casts and FIXED_ON_RESUME all come from it, so they cannot drift apart. `resolve_config` returns a
frozen TrainConfig, validated and cast once; `to_dict()` is config.json, the same JSON as before, and
`TrainConfig.from_saved` reads any version's config.json back (older runs resume, evaluate and export).
Imports no TensorFlow: `train.py --help` and a bad flag answer at once.
"""

import argparse
import dataclasses
import json
import math
import os

from mineralnet.data.augment import AugmentConfig
from mineralnet.errors import MineralnetError

MIN_IMAGE_SIZE = 32  # the registry's models downsample 32-fold
DEFAULT_OUT = "runs/train"  # the run directory (train.py's --out) when none is given
# Kinds of option: how its flag parses and how a value from a config file is cast.
TEXT, PATH, INT, FLOAT, SWITCH, SIZES, AUGMENT = "text", "path", "int", "float", "switch", "sizes", "augment"


def option(default, help, kind=TEXT, metavar=None, choices=None, fixed=False, flag=None, shown=None):
    """One row of the table.

    fixed: a resumed run may not change it (the model, its input and the data it learns from are fixed at its start:
    a different value would be silently ignored by the restored checkpoint, or would mix two experiments); flag: the
    flag when it is not --the-key (a switch named --no-... turns a default-on option off); choices: a tuple, or a
    function returning one (the model names, known only to the registry); shown: the default as the README shows it.
    """
    metadata = {"help": help, "kind": kind, "metavar": metavar, "choices": choices, "fixed": fixed, "flag": flag,
                "shown": shown}
    if dataclasses.is_dataclass(default):
        return dataclasses.field(default_factory=type(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _models():
    from mineralnet.models.registry import list_models

    return (*list_models(), "auto")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Every option of a training run, in config.json's order. Build it with resolve_config (which validates)."""

    data: str | None = option(None, "folder with one sub-folder of images per class", PATH, "DIR", fixed=True)
    demo: bool = option(False, "make and use the small synthetic demo dataset instead of --data", SWITCH, fixed=True)
    out: str = option(DEFAULT_OUT, "run directory", PATH, "DIR")
    model: str = option("eca_convnext_tiny", "registry model; auto: the measured small-data recipe when --weights "
                        "none and under 500 images per class, else eca_convnext_tiny (config.json records the model "
                        "it picked)", metavar="NAME", choices=_models, fixed=True)
    weights: str = option("imagenet", "imagenet (the paper's transfer learning; needs internet once, or a local copy "
                          "saved by python -m mineralnet.models.weights), none (random init) or PATH of a backbone "
                          ".weights.h5", metavar="imagenet|none|PATH", fixed=True)
    image_size: int = option(224, "square input size in pixels", INT, "N", fixed=True)
    epochs: int = option(200, "total epochs, warm-up included; on --resume a larger value extends the run", INT, "N")
    batch_size: int = option(32, "global batch size", INT, "N", fixed=True)
    lr: float = option(1e-3, "peak learning rate of Adam with cosine decay", FLOAT, "LR")
    warmup_epochs: int = option(0, "linear learning-rate warm-up epochs", INT, "N")
    label_smoothing: float = option(0.0, "cross-entropy label smoothing", FLOAT, "S")
    dropout: float = option(0.0, "dropout before the classifier", FLOAT, "P", fixed=True)
    mixup: float = option(0.0, "Mixup Beta(A, A) alpha on training batches, e.g. 0.2 (0 = off)", FLOAT, "A")
    cutmix: float = option(0.0, "CutMix Beta(A, A) alpha, e.g. 1.0 (0 = off); with --mixup each batch picks one",
                           FLOAT, "A")
    progressive_sizes: tuple = option((), "progressive resizing: train the first epochs at these smaller sizes, "
                                      "then at --image-size (epochs split evenly; models with global pooling)", SIZES,
                                      "32,48", fixed=True, shown="off")
    ema: float = option(0.0, "validate and save an exponential moving average of the weights with this momentum, "
                        "e.g. 0.999 (0 = off; the checkpoint keeps the raw weights)", FLOAT, "M", fixed=True)
    freeze_epochs: int = option(0, "head-only epochs (ECA + classifier) with the backbone frozen, before fine-tuning",
                                INT, "N", fixed=True)
    seed: int = option(0, "seed of split, shuffling, augmentation and init", INT, "N", fixed=True)
    split: str | None = option(None, "reuse this split.csv instead of making a new split", PATH, "FILE", fixed=True)
    split_ratios: str = option("6:1:1:2", "train:val:calib:test (calib is held out for the conformal reject "
                               "threshold); a three-part train:val:test like 6:2:2 makes no calib subset",
                               metavar="R", fixed=True)
    limit_per_class: int | None = option(None, "use at most N images per class (quick runs)", INT, "N", fixed=True)
    class_weights: bool = option(False, "weight the loss by inverse class frequency", SWITCH)
    mixed_precision: str = option("off", "mixed-precision policy", choices=("off", "float16", "bfloat16"), fixed=True)
    strategy: str = option("auto", "auto: several GPUs mirrored (TensorFlow), a job of several processes or hosts in "
                           "KERAS_DISTRIBUTION_JOB_ADDRESSES multiworker (JAX backend, docs/distributed.md)",
                           choices=("auto", "default", "mirrored", "multiworker"))
    cpu_devices: int = option(1, "split the CPU into N logical devices (tries distribution without GPUs)", INT, "N")
    augment: AugmentConfig = option(AugmentConfig(), "JSON overrides of the augmentation, e.g. "
                                    "'{\"rotation\": 0.2, \"noise\": 0}'", AUGMENT, "JSON")
    evaluate: bool = option(True, "skip the final evaluation of the best model on the test subset", SWITCH,
                            flag="--no-evaluate", shown="")
    tta: bool = option(False, "also report test-time augmentation (8 flips/rotations averaged) in the final "
                       "evaluation", SWITCH)
    deterministic: bool = option(False, "TensorFlow op determinism: the same seed and data give the same history.csv "
                                 "(slower on GPUs)", SWITCH)
    init_from: str | None = option(None, "start from the weights of this model.keras (same model, classes and "
                                   "size); not with --resume", PATH, "PATH")

    def to_dict(self):
        """config.json: plain JSON values (the augmentation a nested object, progressive_sizes a list)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_saved(cls, values):
        """The TrainConfig of a run's config.json (`values`), whichever version wrote it: options added since take
        their defaults, keys that are no option (an ensemble's members, options since removed) are left out, values
        are cast as the table says. Not validated again: it was when the run was made, and an ensemble's run records
        the model `ensemble`, no choice of train.py. Every reader of a run reads its options through this
        (mineralnet.rundir.Run.train_config)."""
        config = {**json.loads(json.dumps(DEFAULTS)), **{key: values[key] for key in DEFAULTS if key in values}}
        _cast(config)
        augment = {key: value for key, value in (config["augment"] or {}).items() if key in DEFAULTS["augment"]}
        config["augment"] = AugmentConfig.from_dict({**DEFAULTS["augment"], **augment})
        config["progressive_sizes"] = tuple(int(size) for size in config["progressive_sizes"] or ())
        return cls(**config)

    def replace(self, **changes):
        """A validated copy with `changes` (the config is frozen: a run's options change only through validation)."""
        return validate({**self.to_dict(), **changes})

    @property
    def backbone_weights(self):
        """The `weights` argument of build_model."""
        return None if self.weights == "none" else self.weights


FIELDS = {field.name: field.metadata for field in dataclasses.fields(TrainConfig)}
DEFAULTS = TrainConfig().to_dict()
FIXED_ON_RESUME = tuple(key for key, meta in FIELDS.items() if meta["fixed"])
CHOICES = {key: meta["choices"] for key, meta in FIELDS.items() if isinstance(meta["choices"], tuple)}
# Options only for the command line (how to read the others), not stored in config.json.
CLI_ONLY = {
    "config": ("FILE", "YAML or JSON file of options (each a key above); flags override it, it overrides the defaults"),
    "resume": (None, "continue the run in --out from its last finished epoch; a larger --epochs extends it, "
               "--lr/--warmup-epochs/--label-smoothing/--mixup/--cutmix/--augment apply from there on; the options "
               "that define the model or the data must not change"),
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
    """DEFAULTS <- config file <- explicit overrides (None values in overrides are ignored); a validated
    TrainConfig."""
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
    for key, meta in FIELDS.items():
        kind, value = meta["kind"], config[key]
        if value is None and DEFAULTS[key] is None:
            continue  # an optional value left unset
        if key == "limit_per_class":
            if isinstance(value, bool) or not str(value).isdigit() or int(value) < 1:
                raise ConfigError(f"option 'limit_per_class' must be a positive whole number, got {value!r}.")
            config[key] = int(value)
        elif kind in (INT, FLOAT):
            try:
                if isinstance(value, bool) or (kind == INT and float(value) != int(float(value))):
                    raise ValueError
                config[key] = int(float(value)) if kind == INT else float(value)
            except (TypeError, ValueError):
                raise ConfigError(f"option '{key}' must be {'a whole number' if kind == INT else 'a number'}, "
                                  f"got {value!r}.") from None
            if not math.isfinite(config[key]):
                raise ConfigError(f"option '{key}' must be a finite number, got {value!r}.")
        elif kind == SWITCH and not isinstance(value, bool):
            raise ConfigError(f"option '{key}' is a switch: use true or false, got {value!r}.")


def validate(config):
    """Cast and check every option of the dict `config`; the TrainConfig. A value that makes no sense is refused
    before anything is written (a negative learning rate would train by gradient ascent for a whole run and report
    success)."""
    config = dict(config)
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
        config["progressive_sizes"] = tuple(int(s) for s in sizes)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"progressive_sizes must be image sizes like 32,48, got {sizes!r}.") from error
    if any(not MIN_IMAGE_SIZE <= s < config["image_size"] for s in config["progressive_sizes"]) or \
            list(config["progressive_sizes"]) != sorted(set(config["progressive_sizes"])):
        raise ConfigError(f"progressive_sizes {list(config['progressive_sizes'])} must rise, each at least "
                          f"{MIN_IMAGE_SIZE} and below image_size {config['image_size']}.")
    if config["progressive_sizes"]:
        from mineralnet.models.registry import takes_any_size

        if not takes_any_size(config["model"]):
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
        config["augment"] = AugmentConfig.from_dict(config["augment"])
    except (TypeError, ValueError) as error:
        raise ConfigError(str(error)) from error
    if str(config["weights"]).lower() == "none":
        config["weights"] = "none"
    return TrainConfig(**config)


def resume_changes(saved, config, finished_epochs):
    """The options a resumed run changes, {key: (old, new)}; refuses those that define the model or the data,
    and an --epochs below what the run already finished. Everything else (epochs, lr, warm-up, label smoothing,
    Mixup/CutMix, augmentation, ...) is applied from the resumed epoch on and recorded in config.json."""
    values = config.to_dict()
    saved = resolve_config(saved).to_dict()  # options added since the run was made: their defaults, not a change
    changes = {key: (saved.get(key), value) for key, value in values.items()
               if key not in ("out",) and _comparable(saved.get(key)) != _comparable(value)}
    for key in FIXED_ON_RESUME:
        if key in changes:
            old, new = changes[key]
            raise ConfigError(f"--{key.replace('_', '-')} {new} differs from the run's {old}: a resumed run keeps the "
                              f"model and data it started with. Drop the flag, or start a new run with another --out.")
    if config.epochs < finished_epochs:
        raise ConfigError(f"--epochs {config.epochs} is below the {finished_epochs} epochs this run already "
                          "finished: pass a larger --epochs to extend it, or omit the flag.")
    return changes


def _comparable(value):
    if isinstance(value, str) and os.path.sep in value:
        return os.path.abspath(value)
    return json.loads(json.dumps(value))


def _flag(key):
    return FIELDS[key]["flag"] or f"--{key.replace('_', '-')}"


def _augment_json(text):
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"--augment needs JSON like '{{\"rotation\": 0.2}}': {error}")


def _shown(key):
    """The default of option `key` as --help and the README show it."""
    meta, value = FIELDS[key], DEFAULTS[key]
    if meta["shown"] is not None:
        return meta["shown"]
    if key == "augment":
        return ", ".join(name if value is True else f"{name} {value}" for name, value in value.items() if value)
    if meta["kind"] == SWITCH:
        return "on" if value else "off"
    return "" if value is None else str(value)


def add_arguments(parser):
    """train.py's flags, one per option of the table, plus CLI_ONLY. Every default is None: an unset flag falls
    through to --config, then to the table's default (so the table's defaults show in the help, not in argparse)."""
    for key, meta in FIELDS.items():
        default = _shown(key)
        help_text = meta["help"] + (f" (default {default})" if default and meta["kind"] != SWITCH else "")
        kwargs = {"dest": key, "default": None, "help": help_text}
        if meta["kind"] == SWITCH:
            kwargs["action"] = "store_false" if _flag(key).startswith("--no-") else "store_true"
        else:
            kwargs["metavar"] = meta["metavar"]
            kwargs["type"] = {INT: int, FLOAT: float, AUGMENT: _augment_json}.get(meta["kind"])
            choices = meta["choices"]
            kwargs["choices"] = choices() if callable(choices) else choices
            if callable(choices):  # a long list: named once in the help, not in the usage line
                kwargs["help"] += f"; one of {', '.join(kwargs['choices'])}"
            elif choices:
                kwargs["metavar"] = None
        parser.add_argument(_flag(key), **kwargs)
    for key, (metavar, help_text) in CLI_ONLY.items():
        if metavar:
            parser.add_argument(f"--{key}", metavar=metavar, help=help_text)
        else:
            parser.add_argument(f"--{key}", action="store_true", help=help_text)
    return parser


def markdown_table():
    """README.md's table of train.py's flags (README holds it verbatim; a test compares)."""
    lines = ["| flag | default | |", "|---|---|---|"]
    for key, meta in FIELDS.items():
        choices = meta["choices"]
        name = _flag(key)
        if isinstance(choices, tuple):
            name += " " + "\\|".join(choices)
        elif meta["metavar"] and meta["kind"] != SWITCH:
            name += " " + meta["metavar"].replace("|", "\\|")
        default = _shown(key)
        help_text = meta["help"].replace("|", "\\|")
        lines.append(f"| `{name}` | {f'`{default}`' if default else ''} | {help_text} |")
    for key, (metavar, help_text) in CLI_ONLY.items():
        lines.append(f"| `--{key}{' ' + metavar if metavar else ''}` | | {help_text} |")
    return "\n".join(lines) + "\n"

