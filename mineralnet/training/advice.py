"""What a run without pretrained weights on small data should use (issue 16): the line train.py prints, and what
`--model auto` picks.

The recipe is a measured row of benchmarks/results/minet/attempts.md (MINET-7, 6:2:2 split, from scratch on
2 CPU cores), not a guess: change it only together with a new measured row there.
"""

from mineralnet.training.config import DEFAULTS, ConfigError

AUTO = "auto"
SMALL_DATA_IMAGES_PER_CLASS = 500  # below this average, without pretrained weights, the recipe below applies
# attempts a04-a09: the long schedule is what pays off (+8.6 points for simple_cnn, +13.9 for eca_resnet18 over
# 6 epochs); simple_cnn matched eca_resnet18 (64 or 96 px) within noise at a seventh of the training time.
SMALL_DATA_RECIPE = {"model": "simple_cnn", "image_size": 64, "epochs": 30, "warmup_epochs": 2, "label_smoothing": 0.1}
MEASURED = ("on MINET-7 from scratch simple_cnn reached 75.4 % test accuracy in 1 min, eca_resnet18 73.8 % in 7 min, "
            "eca_convnext_tiny 70.7 % in 59 min; benchmarks/results/minet/attempts.md")


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
    if small_from_scratch:
        return config, (f"small data without pretrained weights ({situation}): the measurements favour {recipe_flags()} "
                f"(what --model auto picks; {MEASURED}); ImageNet weights do far better, see README 'Your own photos'")
    return config, None
