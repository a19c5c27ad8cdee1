"""Command-line entry points (`train.py`, `mineralnet-train`): parse flags, call the package.

The flags come from the option table in mineralnet.training.config; parsing them imports no TensorFlow.
"""

import argparse
import sys

from mineralnet.errors import cli
from mineralnet.training.config import DEFAULT_OUT, add_arguments, load_config_file, markdown_table, resolve_config
from mineralnet.training.filesystem import check_writable


def train_parser():
    p = argparse.ArgumentParser(
        prog="train.py",
        description="Train a mineral classifier into one run directory (config, split, model, curves, evaluation).",
    )
    return add_arguments(p)


@cli
def train_main(argv=None):
    args = vars(train_parser().parse_args(argv))
    config_file, resume = args.pop("config"), args.pop("resume")
    file_values = load_config_file(config_file) if config_file else {}
    if not resume:  # a value that makes no sense stops here, before TensorFlow loads (seconds)
        resolve_config(file_values, args)
    check_writable(args.get("out") or file_values.get("out") or DEFAULT_OUT)  # so does a read-only --out
    from mineralnet.training.workers import use_jax_backend

    use_jax_backend(args["strategy"] or "auto")  # a multi-worker job trains on Keras' JAX backend, set before it loads
    from mineralnet.training import run_from_args

    print(f"run directory: {run_from_args(args, config_file, resume)}")


if __name__ == "__main__":  # python -m mineralnet.train_cli --markdown: README.md's table of train.py's flags
    if sys.argv[1:] != ["--markdown"]:
        sys.exit("usage: python -m mineralnet.train_cli --markdown   (prints README.md's table of train.py's flags)")
    sys.stdout.write(markdown_table())
