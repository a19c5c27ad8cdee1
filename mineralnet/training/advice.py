"""What a run without pretrained weights on small data should use (issue 16): the line train.py prints, and what
`--model auto` picks.

The recipe is a measured row of benchmarks/results/minet/attempts.md (MINET-7, 6:2:2 split, from scratch on
2 CPU cores), not a guess: change it only together with a new measured row there.
"""

import math

from mineralnet.training.config import DEFAULTS, ConfigError

AUTO = "auto"
SMALL_DATA_IMAGES_PER_CLASS = 500  # below this average, without pretrained weights, the recipe below applies
# attempts a04-a09: the long schedule is what pays off (+8.6 points for simple_cnn, +13.9 for eca_resnet18 over
# 6 epochs); simple_cnn matched eca_resnet18 (64 or 96 px) within noise at a seventh of the training time.
SMALL_DATA_RECIPE = {"model": "simple_cnn", "image_size": 64, "epochs": 30, "warmup_epochs": 2, "label_smoothing": 0.1}
MEASURED = ("on MINET-7 from scratch simple_cnn reached 75.4 % test accuracy in 1 min, eca_resnet18 73.8 % in 7 min, "
            "eca_convnext_tiny 70.7 % in 59 min; benchmarks/results/minet/attempts.md")


def weak_model_advice(models=(), weights=None):
    """The fix a weak model's warning ends with (`mineralnet.baseline`, the end of training), never naming what the
    run already uses: `models` its model names (an ensemble's members'), `weights` its starting weights (None:
    unknown). A run that is already the small model from scratch is told to add photos instead."""
    small, pretrained = SMALL_DATA_RECIPE["model"], DEFAULTS["model"]
    fixes = []
    if weights in (None, "none"):
        model_flag = "" if pretrained in models else f"--model {pretrained} "
        fixes.append(f"start from pretrained weights ({model_flag}--weights imagenet --freeze-epochs 5, or --weights "
                     "PATH with a local backbone .weights.h5)")
    if small not in models:
        fixes.append(f"train a model small enough for the data (--model {small})")
    else:
        fixes.append(f"add photos of every class (this run already is {small}, the smallest model)")
    text = " or ".join(fixes)
    return text[0].upper() + text[1:] + "."


def _ratio_text(parts):
    return ":".join(f"{p:g}" for p in parts)


def calib_advice(samples, ratios, seed, calib_rows):
    """The warning train.py prints at split time when the split's `calib_rows` are fewer than the conformal reject
    rule needs at its default alpha (below that its threshold is 1 and every item goes to recheck), naming the
    --split-ratios, with the calib share raised, that gives enough rows for these `samples` (checked by making that
    split) and the smallest alpha the rows allow; None when there are enough, or no calib share on purpose."""
    from mineralnet.conformal import DEFAULT_ALPHA, min_items
    from mineralnet.data import DataError, make_split
    from mineralnet.data.split import parse_ratios

    needed = min_items(DEFAULT_ALPHA)
    fractions = parse_ratios(ratios)
    if fractions[2] == 0 or calib_rows >= needed:
        return None
    parts = [float(p) for p in (ratios.replace(":", ",").split(",") if isinstance(ratios, str) else ratios)]
    scale = sum(parts)
    parts = [f * scale for f in fractions]  # train:val:calib:test in the user's own units
    others = scale - parts[2]
    unit = 1.0 if all(p == int(p) for p in parts) else scale / 20
    alpha = math.ceil(100 / (calib_rows + 1)) / 100  # the smallest 2-decimal alpha with min_items(alpha) <= rows
    usable = f" or calibrate with --alpha {alpha:g} or more" if calib_rows else ""
    fix = None
    # From the share that would give `needed` rows on average, upwards: rounding per class can fall short.
    calib = max(parts[2] + unit, math.ceil(needed * others / max(len(samples) - needed, 1) / unit) * unit)
    while calib <= others:  # calib above half the data leaves too little to train on: not advised
        trial = [parts[0], parts[1], calib, parts[3]]
        try:
            got = sum(row["subset"] == "calib" for row in make_split(samples, trial, seed))
        except DataError:
            got = 0
        if got >= needed:
            fix = f"--split-ratios {_ratio_text(trial)} gives {got}"
            break
        calib += unit
    head = (f"the split has {calib_rows} calib rows, and the conformal reject rule at its default alpha "
            f"{DEFAULT_ALPHA:g} needs at least {needed}: with fewer, python -m mineralnet.conformal sends every item "
            "to recheck. ")
    if fix:
        return head + f"{fix} of {len(samples)} images,{usable or ' or add photos'}."
    return head + f"No split of these {len(samples)} images gives that many without taking half of them: add photos" \
        f"{usable}."


def recipe_flags(recipe=SMALL_DATA_RECIPE):
    return " ".join(f"--{key.replace('_', '-')} {value}" for key, value in recipe.items())


def resolve_auto(config, num_images, num_classes):
    """Make `config.model == "auto"` concrete before the model is built and config.json written; returns (the config,
    the one line to print, None when there is nothing to say).

    Small data (< SMALL_DATA_IMAGES_PER_CLASS images per class on average) with `weights: none` gets
    SMALL_DATA_RECIPE: its model, and its other settings where the config left them at train.py's defaults (an
    explicit value wins). Otherwise auto is the default model (the paper's, for ImageNet weights); a backbone
    weights file belongs to one model, which auto cannot guess.
    """
    per_class = num_images / max(num_classes, 1)
    small_from_scratch = config.weights == "none" and per_class < SMALL_DATA_IMAGES_PER_CLASS
    situation = (f"{per_class:.0f} images per class on average, "
                 f"{'no pretrained weights' if config.weights == 'none' else 'weights ' + str(config.weights)}")
    if config.model == AUTO:
        if small_from_scratch:
            chosen = {key: value for key, value in SMALL_DATA_RECIPE.items()
                      if key == "model" or getattr(config, key) == DEFAULTS[key]}
            if chosen.get("warmup_epochs", 0) >= chosen.get("epochs", config.epochs):
                del chosen["warmup_epochs"]  # an explicit --epochs shorter than the recipe's warm-up: none
        elif config.weights not in ("none", "imagenet"):
            raise ConfigError(f"--model auto cannot tell which model the weights file '{config.weights}' belongs "
                              "to: name that model with --model.")
        else:
            chosen = {"model": DEFAULTS["model"]}
        config = config.replace(**chosen)  # validated: the recipe meets the user's other options (progressive_sizes
        # needs an any-size model)
        why = f" (measured: {MEASURED})" if small_from_scratch else ""
        return config, f"--model auto: {situation} -> {', '.join(f'{k} {v}' for k, v in chosen.items())}{why}"
    differing = {key: value for key, value in SMALL_DATA_RECIPE.items() if getattr(config, key) != value}
    if small_from_scratch and differing:  # the settings the run already has are not advised again
        return config, (f"small data without pretrained weights ({situation}): the measurements favour "
                        f"{recipe_flags(differing)} (what --model auto picks; {MEASURED}); ImageNet weights do far "
                        "better, see README 'Your own photos'")
    return config, None
