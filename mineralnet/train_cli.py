"""Command-line entry points (`train.py`, `mineralnet-train`): parse flags, call the package."""

import argparse
import json

from mineralnet.errors import cli
from mineralnet.models import list_models


def _augment(text):
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"--augment needs JSON like '{{\"rotation\": 0.2}}': {error}")


def train_parser():
    p = argparse.ArgumentParser(
        prog="train.py",
        description="Train a mineral classifier into one run directory (config, split, model, curves, evaluation).",
    )
    # Every default is None: unset flags fall through to --config, then to mineralnet.training.DEFAULTS.
    add = p.add_argument
    add("--data", help="folder with one sub-folder of images per class")
    add("--demo", action="store_true", default=None, help="make and use the small synthetic demo dataset")
    add("--out", help="run directory (default runs/train)")
    add("--model", choices=[*list_models(), "auto"], help="registry model (default eca_convnext_tiny); auto: the "
        "measured small-data recipe when --weights none and under 500 images per class, else eca_convnext_tiny "
        "(config.json records the model it picked)")
    add("--weights", help="imagenet | none | PATH of a backbone .weights.h5 (default imagenet: the paper's transfer "
        "learning; needs internet once, or a local copy saved by python -m mineralnet.models.weights)")
    add("--image-size", type=int, help="square input size in pixels (default 224)")
    add("--epochs", type=int, help="total epochs, warm-up included (default 200)")
    add("--batch-size", type=int, help="global batch size (default 32)")
    add("--lr", type=float, help="peak learning rate of Adam with cosine decay (default 1e-3)")
    add("--warmup-epochs", type=int, help="linear learning-rate warm-up epochs (default 0)")
    add("--label-smoothing", type=float, help="cross-entropy label smoothing (default 0)")
    add("--dropout", type=float, help="dropout before the classifier (default 0)")
    add("--mixup", type=float, help="Mixup Beta alpha on training batches, e.g. 0.2 (default 0 = off)")
    add("--cutmix", type=float, help="CutMix Beta alpha, e.g. 1.0 (default 0 = off); with --mixup each batch picks one")
    add("--progressive-sizes", help="progressive resizing: train the first epochs at these smaller sizes, e.g. "
        "32,48, then at --image-size (epochs split evenly; models with global pooling)")
    add("--ema", type=float, help="validate and save an exponential moving average of the weights with this "
        "momentum, e.g. 0.999 (default 0 = off)")
    add("--freeze-epochs", type=int, help="head-only epochs with the backbone frozen, before fine-tuning (default 0)")
    add("--seed", type=int, help="seed of split, shuffling, augmentation and init (default 0)")
    add("--split", help="reuse this split.csv instead of making a new split")
    add("--init-from", help="start from the weights of this earlier run's model.keras (same --model, classes and "
        "--image-size), e.g. to retrain with reviewed images: --split RUN_plus_review_split.csv")
    add("--split-ratios", help="train:val:calib:test (default 6:1:1:2; calib is held out for the conformal reject "
        "threshold); a three-part train:val:test like 6:2:2 makes no calib subset")
    add("--limit-per-class", type=int, help="use at most N images per class (quick runs)")
    add("--class-weights", action="store_true", default=None, help="weight the loss by inverse class frequency")
    add("--mixed-precision", choices=["off", "float16", "bfloat16"], help="mixed-precision policy (default off)")
    add("--strategy", choices=["auto", "default", "mirrored", "multiworker"], help="tf.distribute strategy")
    add("--cpu-devices", type=int, help="split the CPU into N logical devices (test distribution without GPUs)")
    add("--augment", type=_augment, help='JSON overrides of the augmentation, e.g. \'{"rotation": 0.2, "noise": 0}\'')
    add("--no-evaluate", dest="evaluate", action="store_false", default=None, help="skip the final test evaluation")
    add("--tta", action="store_true", default=None,
        help="also report test-time augmentation (8 flips/rotations averaged) in the final evaluation")
    add("--config", help="YAML or JSON file of options; flags override it")
    add("--deterministic", action="store_true", default=None,
        help="TensorFlow op determinism: the same seed and data give the same history.csv (slower on GPUs)")
    add("--resume", action="store_true", help="continue the run in --out from its last finished epoch; a larger "
        "--epochs extends it, --lr/--warmup-epochs/--label-smoothing/--mixup/--cutmix/--augment apply from there on; "
        "flags that define the model or the data must not change")
    return p


@cli
def train_main(argv=None):
    from mineralnet.training import run_from_args

    args = vars(train_parser().parse_args(argv))
    config_file, resume = args.pop("config"), args.pop("resume")
    print(f"run directory: {run_from_args(args, config_file, resume)}")
