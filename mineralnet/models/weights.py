"""Save a registry model's ImageNet backbone weights to a file, on a machine with internet, for plants without:

    python -m mineralnet.models.weights --model eca_convnext_tiny --out convnext_tiny_imagenet.weights.h5

Copy the file to the training machine and train with `--weights convnext_tiny_imagenet.weights.h5`: the same
transfer learning as `--weights imagenet`, without a download.
"""

import argparse
import sys

from mineralnet.errors import cli
from mineralnet.models.registry import WeightsError, has_imagenet_weights, imagenet_backbone, list_models
from mineralnet.utils import atomic_path

SAVE_SIZE = 224  # the backbones are fully convolutional: the file loads at any input size


def save_backbone_weights(name, path, backbone=None):
    """Write model `name`'s ImageNet backbone weights (or those of `backbone`, a model built the same way) to
    `path` atomically; returns the path."""
    if not str(path).endswith(".weights.h5"):  # before a download of ~100 MB
        raise WeightsError(f"'{path}' must end in .weights.h5 (Keras' weights file format): pass another --out.")
    backbone = backbone or imagenet_backbone(name, (SAVE_SIZE, SAVE_SIZE, 3))
    with atomic_path(path) as tmp:
        backbone.save_weights(tmp)
    return path


@cli
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, choices=list_models(),
                        help="registry model whose backbone to save (one with ImageNet weights in Keras)")
    parser.add_argument("--out", required=True, help="weights file to write, ending in .weights.h5")
    args = parser.parse_args(argv)
    # Which models have ImageNet weights is known once their modules (and so TensorFlow) are imported: after --help.
    if not has_imagenet_weights(args.model):
        models = [name for name in list_models() if has_imagenet_weights(name)]
        parser.error(f"{args.model} has no ImageNet weights in Keras: choose one of {', '.join(models)}.")
    path = save_backbone_weights(args.model, args.out)
    print(f"saved {args.model}'s ImageNet backbone weights to {path}: train with --weights {path}")


if __name__ == "__main__":
    sys.exit(main())
